from pathlib import Path

from sd_lora.config.reference import config_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text()
    block = text.split("<!-- config-reference:start -->\n", 1)[1].split("\n<!-- config-reference:end -->", 1)[0]
    assert block == config_reference(), "regenerate: python -m sd_lora.config.reference"


def test_every_key_has_help():
    for line in config_reference().splitlines()[2:]:
        assert line.rstrip(" |").split("|")[-1].strip(), line
