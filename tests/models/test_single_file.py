"""Single-file checkpoints in the original (LDM / SGM) layout load offline, exactly, for every family."""

from __future__ import annotations

import json
import types

import pytest
import torch
from safetensors.torch import save_file

from sd_lora.errors import SdLoraError
from sd_lora.models.families import unet_architectures as architectures
from sd_lora.models.clip_vocab import CLIP_VOCAB_SIZE, clip_vocab_and_merges, write_clip_tokenizer
from sd_lora.models.families.unet_original_layout import pipeline_to_original
from sd_lora.models.families.unet_single_file import load_single_file_pipeline, read_checkpoint, save_single_file
from sd_lora.models.families.unet_single_file_configs import METADATA_KEY, derive_configs, describe_pipeline
from sd_lora.models.tiny import build_tiny_pipeline

FAMILIES = ("sd1", "sd2", "sdxl")
_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _original_state(pipe, family, drop=()):
    return {k: v.contiguous() for k, v in pipeline_to_original(pipe, family).items() if not k.startswith(tuple(drop))}


def _save(pipe, family, path, *, stored=True, drop=(), extra=None):
    metadata = {METADATA_KEY: json.dumps(describe_pipeline(pipe, family))} if stored else {}
    save_file({**_original_state(pipe, family, drop), **(extra or {})}, str(path), metadata=metadata)
    return str(path)


def _assert_same_weights(expected, actual):
    for name in _COMPONENTS:
        if getattr(expected, name, None) is None:
            continue
        want, got = getattr(expected, name).state_dict(), getattr(actual, name).state_dict()
        assert set(want) == set(got), name
        for key, value in want.items():
            assert torch.equal(value, got[key]), f"{name}.{key}"


def _image(pipe):
    kwargs = dict(prompt="a red circle", negative_prompt="blue", num_inference_steps=2, height=32, width=32,
                  output_type="np")
    return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images


class _Tiny(dict):
    """family -> (tiny pipeline, its file from `save_single_file`: stored configs + tokenizer), built on first use."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, family):
        pipe = build_tiny_pipeline(family, seed=1)
        path = save_single_file(pipe, self.root / f"{family}.safetensors", family)
        self[family] = (pipe, str(path))
        return self[family]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _Tiny(tmp_path_factory.mktemp("single_file"))


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_checkpoint_loads_back_exactly(tiny, family):
    pipe, path = tiny[family]
    loaded, detected = load_single_file_pipeline(path)
    assert detected == family
    _assert_same_weights(pipe, loaded)
    assert loaded.scheduler.config.prediction_type == pipe.scheduler.config.prediction_type
    assert loaded.tokenizer("a red circle").input_ids == pipe.tokenizer("a red circle").input_ids
    assert (_image(loaded) == _image(pipe)).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_without_stored_config_weights_come_from_shapes(tiny, family, tmp_path):
    pipe, _ = tiny[family]
    path = _save(pipe, family, tmp_path / "plain.safetensors", stored=False)
    pipe.tokenizer.save_pretrained(str(tmp_path / "tok"))
    loaded, detected = load_single_file_pipeline(path, tokenizer_dir=str(tmp_path / "tok"))
    assert detected == family
    _assert_same_weights(pipe, loaded)
    # Every size comes from the tensor shapes.
    for key in ("block_out_channels", "down_block_types", "layers_per_block", "cross_attention_dim"):
        want = pipe.unet.config[key]
        assert loaded.unet.config[key] == (list(want) if isinstance(want, tuple) else want), key


def test_non_clip_vocabulary_without_tokenizer_is_a_clear_error(tiny, tmp_path):
    pipe, _ = tiny["sd1"]
    path = _save(pipe, "sd1", tmp_path / "plain.safetensors", stored=False)
    vocab = pipe.text_encoder.config.vocab_size
    with pytest.raises(SdLoraError, match=rf"{vocab} tokens, not CLIP's 49408.*model.tokenizer"):
        load_single_file_pipeline(path)


def _with_clip_vocab(family):
    """A tiny pipeline whose text encoders have CLIP's 49,408-token vocabulary, as real checkpoints do."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    pipe = build_tiny_pipeline(family, seed=2)
    for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        if getattr(pipe, name, None) is not None:
            cfg = getattr(pipe, name).config
            cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id = CLIP_VOCAB_SIZE, 49406, 49407
            setattr(pipe, name, cls(cfg))
    return pipe


@pytest.mark.parametrize("family,pad_id", [("sd1", 49407), ("sd2", 0)])
def test_real_vocabulary_gets_the_shipped_clip_tokenizer(family, pad_id, tmp_path):
    pipe = _with_clip_vocab(family)
    path = _save(pipe, family, tmp_path / "clip.safetensors", stored=False)
    loaded, _ = load_single_file_pipeline(path, prediction_type="epsilon")
    tok = loaded.tokenizer
    assert len(tok) == CLIP_VOCAB_SIZE and tok.pad_token_id == pad_id  # SD2 pads with "!" like OpenCLIP
    ids = tok("a photo of a cat", padding="max_length", max_length=9).input_ids
    # OpenAI CLIP's ids for this caption (a</w> = 256 + 64: the byte alphabet puts "a" at 64).
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407, pad_id, pad_id]
    _assert_same_weights(pipe, loaded)


def test_shipped_vocabulary_is_clips(tmp_path):
    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == CLIP_VOCAB_SIZE and len(set(vocab.values())) == CLIP_VOCAB_SIZE
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (49406, 49407)
    assert len(merges) == 48894 and merges[0] == "i n"
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tmp_path / "tok")))
    assert tok("Hello, WORLD!!").input_ids == [49406, 3306, 267, 1002, 748, 49407]


def _full_size_original(family):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        parts = {"unet": UNet2DConditionModel(**architectures.unet_config(family)),
                 "vae": AutoencoderKL(**architectures.vae_config(family))}
        configs = architectures.text_encoder_configs(family)
        parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(**configs[0]))
        if family == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**configs[1]))
    return pipeline_to_original(types.SimpleNamespace(**parts), family)


@pytest.mark.parametrize("family,diffusers_type", [("sd1", "v1"), ("sd2", "v2"), ("sdxl", "xl_base")])
def test_full_size_shapes_give_the_full_size_configs(family, diffusers_type):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    state = _full_size_original(family)
    assert infer_diffusers_model_type(state) == diffusers_type  # diffusers recognises the layout too
    prediction = "v_prediction" if family == "sd2" else "epsilon"
    derived = derive_configs(state, family, prediction)
    for name, expected in [("unet", architectures.unet_config(family)), ("vae", architectures.vae_config(family)),
                           *zip(("text_encoder", "text_encoder_2"), architectures.text_encoder_configs(family))]:
        assert {k: derived[name][k] for k in expected} == expected, name


def test_pickle_refused_by_default_and_loaded_with_opt_in(tiny, tmp_path):
    pipe, _ = tiny["sd1"]
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": _original_state(pipe, "sd1"), "global_step": 10}, path)
    with pytest.raises(SdLoraError, match="arbitrary code.*model.allow_pickle = true"):
        load_single_file_pipeline(str(path))
    pipe.tokenizer.save_pretrained(str(tmp_path / "tok"))
    loaded, family = load_single_file_pipeline(str(path), allow_pickle=True, tokenizer_dir=str(tmp_path / "tok"))
    assert family == "sd1"
    _assert_same_weights(pipe, loaded)


class _NotATensor:
    pass


def test_pickle_with_objects_is_refused_even_with_opt_in(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callback": _NotATensor()}, path)
    with pytest.raises(SdLoraError, match="weights_only=True"):
        read_checkpoint(path, allow_pickle=True)


def test_truncated_file_is_a_clear_error(tiny, tmp_path):
    _, path = tiny["sd1"]
    data = open(path, "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SdLoraError, match=r"cut\.safetensors.*truncated"):
        load_single_file_pipeline(str(cut))


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("just some text")
    with pytest.raises(SdLoraError, match="notes.safetensors is neither"):
        load_single_file_pipeline(str(path))


def test_lora_file_is_named_as_such(tmp_path):
    path = tmp_path / "adapter.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(path))
    with pytest.raises(SdLoraError, match="LoRA adapter, not a base model"):
        load_single_file_pipeline(str(path))


def test_missing_component_names_the_missing_key(tiny, tmp_path):
    pipe, _ = tiny["sd1"]
    path = _save(pipe, "sd1", tmp_path / "novae.safetensors", stored=False, drop=["first_stage_model."])
    with pytest.raises(SdLoraError, match=r"novae.safetensors VAE is missing 'encoder.conv_in.weight'"):
        load_single_file_pipeline(path, tokenizer_dir=str(tmp_path))


@pytest.mark.parametrize("dropped,component,named", [
    ("model.diffusion_model.out.2.", "unet", "conv_out"),
    ("cond_stage_model.transformer.text_model.final_layer_norm.", "text_encoder", "final_layer_norm"),
])
def test_missing_weights_are_not_left_uninitialised(tiny, tmp_path, dropped, component, named):
    pipe, _ = tiny["sd1"]
    path = _save(pipe, "sd1", tmp_path / "partial.safetensors", drop=[dropped])
    with pytest.raises(SdLoraError, match=f"lacks weights of the {component}: {named}"):
        load_single_file_pipeline(path)


def test_sd2_prediction_type(tiny, tmp_path, capsys):
    pipe, _ = tiny["sd2"]
    pipe.tokenizer.save_pretrained(str(tmp_path / "tok"))
    plain = _save(pipe, "sd2", tmp_path / "plain.safetensors", stored=False)
    loaded, _ = load_single_file_pipeline(plain, tokenizer_dir=str(tmp_path / "tok"))
    assert loaded.scheduler.config.prediction_type == "epsilon"
    assert 'model.prediction_type = "v_prediction"' in capsys.readouterr().out
    loaded, _ = load_single_file_pipeline(plain, prediction_type="v_prediction", tokenizer_dir=str(tmp_path / "tok"))
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    marked = _save(pipe, "sd2", tmp_path / "marked.safetensors", stored=False, extra={"v_pred": torch.zeros(0)})
    loaded, _ = load_single_file_pipeline(marked, tokenizer_dir=str(tmp_path / "tok"))
    assert loaded.scheduler.config.prediction_type == "v_prediction"


def test_family_override_that_does_not_fit_the_layout(tiny):
    _, path = tiny["sd1"]
    with pytest.raises(SdLoraError, match="sdxl"):
        load_single_file_pipeline(path, family="sdxl")


def test_torch_dtype_is_applied_to_every_component(tiny):
    pipe, path = tiny["sd1"]
    loaded, _ = load_single_file_pipeline(path, torch_dtype=torch.bfloat16)
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], v.to(torch.bfloat16))
                   for k, v in want.items() if v.is_floating_point()), name


def test_save_single_file_stores_configs_and_only_non_clip_tokenizers(tiny, tmp_path):
    pipe, _ = tiny["sd2"]
    path = save_single_file(pipe, tmp_path / "m.safetensors", "sd2")
    _, metadata = read_checkpoint(path)
    record = json.loads(metadata[METADATA_KEY])
    assert record["family"] == "sd2" and record["prediction_type"] == "v_prediction"
    assert record["unet"]["attention_head_dim"] == list(pipe.unet.config.attention_head_dim)
    assert "tokenizer" in record  # the tiny vocabulary is not CLIP's, so the loader could not rebuild it
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # written atomically, no leftovers
    _, metadata = read_checkpoint(save_single_file(pipe, tmp_path / "n.safetensors", "sd2", with_tokenizers=False))
    assert "tokenizer" not in json.loads(metadata[METADATA_KEY])


def test_inspect_reads_family_and_prediction_without_weights(tiny, tmp_path, capsys):
    from sd_lora.models.families.unet_single_file import inspect_single_file

    pipe, stored = tiny["sd2"]
    assert inspect_single_file(stored) == ("sd2", "v_prediction")  # from sd-lora's stored record
    plain = _save(pipe, "sd2", tmp_path / "plain.safetensors", stored=False)
    assert inspect_single_file(plain) == ("sd2", "epsilon")
    assert inspect_single_file(plain, prediction_type="v_prediction") == ("sd2", "v_prediction")
    assert capsys.readouterr().out == ""  # the SD2 note is for loading, not inspecting
    ckpt = tmp_path / "m.ckpt"
    torch.save(_original_state(pipe, "sd2"), ckpt)
    with pytest.raises(SdLoraError, match="allow_pickle"):
        inspect_single_file(str(ckpt))


def test_only_model_weights_are_read(tiny, tmp_path):
    pipe, _ = tiny["sd1"]
    ema = {"model_ema.decay": torch.tensor(0.999), "model_ema.diffusion_modelout2weight": torch.zeros(4, 32, 3, 3)}
    path = _save(pipe, "sd1", tmp_path / "ema.safetensors", extra=ema)
    state, _ = read_checkpoint(path)
    assert not any(k.startswith("model_ema.") for k in state)
    assert set(state) == set(_original_state(pipe, "sd1"))
