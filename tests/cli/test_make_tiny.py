import pytest

from sd_lora.cli.main import main
from sd_lora.models.load import inspect_model


@pytest.mark.parametrize("family", ["sd2", "sdxl", "flux"])
def test_make_tiny_writes_a_loadable_model(tmp_path, family):
    assert main(["make-tiny", str(tmp_path / "m"), "--family", family]) == 0
    assert inspect_model(str(tmp_path / "m")).family == family


def test_make_tiny_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["make-tiny", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "mine"
