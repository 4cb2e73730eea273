import pytest

from sd_lora.config.data import SubsetConfig
from sd_lora.data import scan_dataset
from sd_lora.data.plan import format_plan, make_plan


@pytest.fixture
def planned_cfg(tmp_path, noise_image, data_cfg):
    d, reg = tmp_path / "data", tmp_path / "reg"
    for i in range(3):
        noise_image(d / "10_a" / f"{i}.png", 32, 32, seed=i)
    for i in range(2):
        noise_image(d / "2_b" / f"{i}.png", 48, 32, seed=10 + i)
        noise_image(reg / f"r{i}.png", 32, 32, seed=20 + i)
    return data_cfg(d, enable_bucket=True, min_bucket_reso=16, max_bucket_reso=64, bucket_reso_steps=8,
                    class_prompt="a dog", prior_loss_weight=0.5, cache_latents=True, flip_aug=True,
                    subsets=[SubsetConfig(dir=str(reg), is_reg=True, num_class_images=5)])


def test_plan_numbers_match_a_hand_computation(planned_cfg):
    plan = make_plan(planned_cfg, scan_dataset(planned_cfg), batch_size=4, gradient_accumulation_steps=3,
                     num_processes=2, max_steps=10)
    # 48x32 (ratio 1.5) -> 40x24 is the closest of the 32² budget buckets: 40x24 (1.67), 32x32 (1), 48x16 (3).
    # Training samples: 3 x 10 = 30 in 32x32, 2 x 2 = 4 in 40x24. Regularisation: 2 images + 3 to generate,
    # balanced to 34 samples, all 32x32. Batches of 4: ceil(64 / 4) + ceil(4 / 4) = 17, per process ceil(17 / 2) = 9.
    assert [(s.name, s.images, s.repeats, s.samples, s.to_generate) for s in plan.subsets] == \
        [("a", 3, 10, 30, 0), ("b", 2, 2, 4, 0), ("reg", 5, 1, 34, 3)]
    assert (plan.train_images, plan.reg_images, plan.samples_per_epoch) == (5, 5, 68)
    assert plan.batches_per_epoch == 9
    assert plan.steps_per_epoch == 3.0
    assert plan.epochs == 4  # 10 steps x 3 micro-batches = 30 batches; 30 / 9 -> 4 epochs
    assert plan.effective_batch_size == 24
    assert plan.buckets == {(32, 32): 8, (40, 24): 2}
    text = format_plan(plan)
    for fragment in ("3 images x 10 repeats = 30 samples", "(3 to generate) -> 34 samples", "loss weight 0.5",
                     "4 per process x 3 accumulation x 2 process(es) = 24 effective", "10 steps = 4 epoch(s)",
                     "32x32: 8", "40x24: 2", "VAE latents in memory (both orientations)"):
        assert fragment in text, fragment


def test_plan_from_epochs(planned_cfg):
    plan = make_plan(planned_cfg, scan_dataset(planned_cfg), batch_size=4, gradient_accumulation_steps=3,
                     num_processes=2, max_epochs=5)
    assert (plan.epochs, plan.max_steps) == (5, 9 * 5 // 3)


def test_plan_reports_why_text_outputs_are_not_cached(tmp_path, noise_image, data_cfg):
    noise_image(tmp_path / "d" / "a.png", 32, 32, caption="x, y")
    for extra, expected in [({}, "text-encoder outputs in memory"),
                            ({"shuffle_caption": True}, "NOT cached: data.dir: captions change")]:
        cfg = data_cfg(tmp_path / "d", cache_text_encoder_outputs=True, validation_split=0.0, **extra)
        text = format_plan(make_plan(cfg, scan_dataset(cfg), batch_size=1, max_steps=3))
        assert expected in text
