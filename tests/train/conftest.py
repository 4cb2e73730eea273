import pytest


def write_dataset(folder, n=4, size=32, captions=True):
    """Distinct solid-colour squares on white, each with a caption."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    colours = [("red", (220, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 220)), ("yellow", (230, 220, 20))]
    for i in range(n):
        name, rgb = colours[i % len(colours)]
        img = Image.new("RGB", (size, size), "white")
        ImageDraw.Draw(img).rectangle([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill=rgb)
        img.save(folder / f"img{i}.png")
        if captions:
            (folder / f"img{i}.txt").write_text(f"a {name} square")
    return folder


@pytest.fixture
def tiny_dataset(tmp_path):
    return write_dataset(tmp_path / "data")


def tiny_config(model_dir, data_dir, out_dir, **sections):
    from sd_lora.config.load import config_from_dict

    data = {
        "model": {"pretrained": str(model_dir)},
        "data": {"dir": str(data_dir), "resolution": 32},
        "network": {"rank": 4, "alpha": 4.0},
        "train": {"max_steps": 4, "batch_size": 2, "learning_rate": 1e-3, "seed": 0, "log_every_n_steps": 1},
        "output": {"dir": str(out_dir), "name": "tiny"},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)
