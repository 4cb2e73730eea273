"""Two CPU processes (gloo) under `accelerate launch`: sharded data, one writer, doubled effective batch."""

import os
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from tests.train.conftest import write_dataset

REPO = Path(__file__).resolve().parents[2]


def test_two_process_accelerate_launch(tiny_sd1_dir, tmp_path):
    data = write_dataset(tmp_path / "data", n=8)
    out = tmp_path / "out"
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sd_lora", "train",
           "--set", f"model.pretrained={tiny_sd1_dir}", "--set", f"data.dir={data}", "--set", "data.resolution=32",
           "--set", "network.rank=4", "--set", "train.batch_size=2", "--set", "train.max_steps=3",
           "--set", f"output.dir={out}", "--set", "output.name=mp", "--set", "output.log_with='none'"]
    # ACCELERATE_USE_CPU: no GPU here, so accelerate's multi-process launcher runs gloo on the CPU.
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "x 2 process(es) = 4 effective" in log, log[-3000:]
    assert "batches per epoch (per process): 2" in log  # 4 batches of 8 images, sharded over 2
    assert log.count("modules applied") == 1 and log.count("adapter: ") == 1  # one writer
    with safe_open(str(out / "mp.safetensors"), "pt") as f:
        assert any(k.startswith("lora_unet_") for k in f.keys())
