"""Only the family layer names families: code outside sd_lora/models/families/ asks a family object instead.

config/ is below models in the layering (it may not import the registry), so its model.family choices and the
kohya option mapping still spell the names; models/tiny_transformers.py (the tiny SD3 / FLUX builders, which name
their variants) is to move into the layer as the UNet families' tiny builders did; everything else must not.
"""

from __future__ import annotations

import re
from pathlib import Path

import sd_lora
from sd_lora.models.families import FILE_FAMILIES, file_recognisers

_ROOT = Path(sd_lora.__file__).parent
_ALLOWED = ("models/families/", "config/", "models/tiny_transformers.py")


def _family_literals(root: Path = _ROOT) -> list[str]:
    names = "|".join(re.escape(n) for n in FILE_FAMILIES)
    pattern = re.compile(rf"""["']({names})["']""")
    hits = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(_ALLOWED):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{rel}:{i}: {line.strip()}")
    return hits


def test_no_family_name_is_spelt_outside_the_layer():
    assert _family_literals() == []


def test_the_check_finds_a_family_name_and_skips_the_layer(tmp_path):
    for folder in ("tools", "models/families"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "probe.py").write_text('def f(family):\n    return family == "sdxl"\n', encoding="utf-8")
    assert _family_literals(tmp_path) == ['tools/probe.py:2: return family == "sdxl"']


def test_every_file_family_contributes_recognisers_and_file_facts():
    assert {"sd1", "sd2", "sdxl", "sd3", "flux"} <= set(FILE_FAMILIES)
    mine = {id(r) for f in FILE_FAMILIES.values() for _, r in f.file_recognisers()}
    assert mine == {id(r) for r in file_recognisers()}
    for family in FILE_FAMILIES.values():
        assert family.file_recognisers(), family.name
        assert family.short_name and family.community_prefixes, family.name
        facts = family.file_metadata(False)
        assert set(facts) == {"ss_base_model_version", "ss_v2", "modelspec.architecture",
                              "modelspec.implementation", "modelspec.prediction_type"}, family.name
