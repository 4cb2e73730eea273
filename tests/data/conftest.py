import numpy as np
import pytest
from PIL import Image


def save_noise(path, width, height, seed=0, caption=None):
    """A random RGB image (distinct content per seed), optionally with a caption file beside it."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


@pytest.fixture
def noise_image():
    return save_noise


@pytest.fixture
def data_cfg():
    """DataConfig factory with small sizes (tests use 32-64 px images)."""
    from sd_lora.config.data import DataConfig

    def make(dir, **kw):
        kw.setdefault("resolution", 32)
        cfg = DataConfig(dir=str(dir), **kw)
        assert cfg.validate() == [], cfg.validate()
        return cfg

    return make
