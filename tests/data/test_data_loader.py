import torch

from sd_lora.data import build_dataloader, build_dataset, scan_dataset

SIZES = [(32, 32), (48, 32), (32, 48), (40, 40), (64, 32), (32, 32)]


def make_dataset(tmp_path, noise_image, data_cfg, seed=7):
    d = tmp_path / "data"
    for i, (w, h) in enumerate(SIZES):
        noise_image(d / f"{i}.png", w, h, seed=i, caption=f"t{i}, a, b, c, d")
    cfg = data_cfg(d, num_repeats=2, enable_bucket=True, min_bucket_reso=16, max_bucket_reso=64, bucket_reso_steps=8,
                   flip_aug=True, random_crop=True, shuffle_caption=True, caption_tag_dropout_rate=0.2)
    return build_dataset(cfg, scan_dataset(cfg), seed=seed)


def epochs(loader, n):
    out = []
    for e in range(n):
        loader.set_epoch(e)
        out.append(list(loader))
    return out


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"] and x["captions"] == y["captions"]
        assert torch.equal(x["pixel_values"], y["pixel_values"])
        assert torch.equal(x["crop_top_left"], y["crop_top_left"])


def test_workers_do_not_change_batches(tmp_path, noise_image, data_cfg):
    ds = make_dataset(tmp_path, noise_image, data_cfg)
    single = epochs(build_dataloader(ds, batch_size=2, seed=7, num_workers=0), 2)
    multi = epochs(build_dataloader(ds, batch_size=2, seed=7, num_workers=2), 2)
    for a, b in zip(single, multi):
        assert_same_batches(a, b)
    assert [x["keys"] for x in single[0]] != [x["keys"] for x in single[1]]  # a new order each epoch


def test_same_seed_same_batches_other_seed_differs(tmp_path, noise_image, data_cfg):
    ds = make_dataset(tmp_path, noise_image, data_cfg)
    a = epochs(build_dataloader(ds, batch_size=2, seed=7), 1)[0]
    b = epochs(build_dataloader(ds, batch_size=2, seed=7), 1)[0]
    assert_same_batches(a, b)
    other = make_dataset(tmp_path, noise_image, data_cfg, seed=8)
    c = epochs(build_dataloader(other, batch_size=2, seed=8), 1)[0]
    assert [x["keys"] for x in a] != [x["keys"] for x in c]


def test_processes_get_disjoint_shards_of_equal_length(tmp_path, noise_image, data_cfg):
    ds = make_dataset(tmp_path, noise_image, data_cfg)
    whole = build_dataloader(ds, batch_size=2, seed=7).batch_sampler.epoch_batches(0)
    shards = [list(build_dataloader(ds, batch_size=2, seed=7, num_processes=3, process_index=p).batch_sampler)
              for p in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert len(shards[0]) == len(build_dataloader(ds, batch_size=2, seed=7, num_processes=3, process_index=0))
    dealt = [tuple(i for i, _ in b) for s in shards for b in s]
    assert len(dealt) == -(-len(whole) // 3) * 3
    assert set(dealt) == {tuple(b) for b in whole}  # every batch dealt; the padding only repeats batches
    assert len(set(dealt)) == len(whole)


def test_without_set_epoch_each_pass_reshuffles(tmp_path, noise_image, data_cfg):
    ds = make_dataset(tmp_path, noise_image, data_cfg)
    loader = build_dataloader(ds, batch_size=3, seed=7)
    first, second = [b["keys"] for b in loader], [b["keys"] for b in loader]
    assert first != second and sorted(sum(first, [])) == sorted(sum(second, []))
