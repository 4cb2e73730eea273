"""inspect --ranks: effective rank = singular values of the module's delta above 1e-3 of the largest."""

from __future__ import annotations

import json

from sd_lora.cli.main import main
from sd_lora.tools import effective_ranks
from tests.tools.conftest import save_random_adapter, tiny, with_spectrum

MODULE = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"


def test_effective_rank_counts_singular_values_above_the_threshold(tmp_path, capsys):
    src = save_random_adapter(tiny("sd1"), tmp_path / "r6.safetensors", rank=6, seed=3, text_encoder=False)
    # 10 and 5 and 0.02 are above 1e-3 * 10; 0.005 and the zeros are not
    path = with_spectrum(src, tmp_path / "s.safetensors", MODULE, [10.0, 5.0, 0.02, 0.005, 0.0, 0.0])
    ranks = effective_ranks(path)
    assert ranks[MODULE]["rank"] == 6 and ranks[MODULE]["effective_rank"] == 3
    others = [r for name, r in ranks.items() if name != MODULE]
    assert others and all(r["effective_rank"] == 6 for r in others)  # random rank-6 factors are full rank
    assert main(["inspect", str(path), "--ranks", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["effective_ranks"][MODULE]["effective_rank"] == 3
    assert main(["inspect", str(path), "--ranks"]) == 0
    text = capsys.readouterr().out
    assert "effective" in text and MODULE in text
