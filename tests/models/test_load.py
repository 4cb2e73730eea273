import pytest

from sd_lora.errors import SdLoraError
from sd_lora.models.load import inspect_model, load_pipeline


@pytest.mark.parametrize("family,prediction", [("sd1", "epsilon"), ("sd2", "v_prediction"), ("sdxl", "epsilon")])
def test_family_and_prediction_detected_from_config(request, family, prediction):
    info = inspect_model(str(request.getfixturevalue(f"tiny_{family}_dir")))
    assert (info.family, info.prediction_type, info.is_local) == (family, prediction, True)


def test_prediction_override_wins_and_a_contradicting_family_is_an_error(tiny_sd1_dir):
    info = inspect_model(str(tiny_sd1_dir), prediction_type="v_prediction")
    assert (info.family, info.prediction_type) == ("sd1", "v_prediction")
    assert inspect_model(str(tiny_sd1_dir), family="sd1").family == "sd1"
    with pytest.raises(SdLoraError, match=r"model.family = 'sd2' contradicts the model: .* is a Stable Diffusion 1.x "
                                          r"model \(sd1\)"):
        inspect_model(str(tiny_sd1_dir), family="sd2")


def test_load_pipeline_local(tiny_sd2_dir):
    pipe, info = load_pipeline(str(tiny_sd2_dir))
    assert info.family == "sd2" and pipe.unet.config.use_linear_projection


def test_missing_path_is_clear_error(tmp_path):
    with pytest.raises(SdLoraError, match="does not exist"):
        inspect_model(str(tmp_path / "nope"))


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "random.txt").write_text("hello")
    with pytest.raises(SdLoraError, match="not a diffusers model"):
        inspect_model(str(tmp_path))


def test_unknown_builtin():
    with pytest.raises(SdLoraError, match="no built-in model 'nope'"):
        inspect_model("builtin:nope")
