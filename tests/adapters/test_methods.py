import pytest
import torch

from sd_lora.adapters import adapter_spec, build_peft_config, inject, trainable_parameters
from sd_lora.adapters.targets import UNET_PRESETS, resolve_targets
from sd_lora.config.schema import NetworkConfig
from sd_lora.errors import SdLoraError
from sd_lora.models.load import load_pipeline
from sd_lora.models.tiny import build_tiny_pipeline


def _image(pipe):
    return pipe("a red circle", num_inference_steps=3, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(1)).images


def _adapt(pipe, **network):
    net = NetworkConfig(**network)
    counts = {}
    for name, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        counts[name] = inject(model, build_peft_config(net.type, adapter_spec(net, model, name)))
    return counts


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_fresh_lora_reproduces_the_base_image(request, family):
    pipe, _ = load_pipeline(str(request.getfixturevalue(f"tiny_{family}_dir")))
    base = _image(pipe)
    counts = _adapt(pipe, rank=4, alpha=4.0)
    assert counts["text_encoder"] == 4 * pipe.text_encoder.config.num_hidden_layers
    assert (_image(pipe) == base).all()
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    assert not torch.allclose(torch.from_numpy(_image(pipe)), torch.from_numpy(base), atol=1e-3)


@pytest.mark.parametrize("network", [
    dict(type="lora", preset="full", conv_rank=2, conv_alpha=1.0),
    dict(type="lora", dora=True), dict(type="lora", rslora=True),
    dict(type="loha", preset="attn-mlp"), dict(type="lokr"),
], ids=["locon", "dora", "rslora", "loha", "lokr"])
def test_every_method_starts_at_the_base_and_trains_only_adapters(network):
    pipe = build_tiny_pipeline("sd1")
    base = _image(pipe)
    _adapt(pipe, rank=4, alpha=2.0, **network)
    assert (_image(pipe) == base).all()
    names = [n for n, p in pipe.unet.named_parameters() if p.requires_grad]
    params = trainable_parameters(pipe.unet)
    assert names and all(p.dtype == torch.float32 for p in params)
    assert all(".default" in n for n in names)  # peft adapter tensors only, the base stays frozen
    assert not pipe.unet.conv_in.weight.requires_grad


def test_locon_gives_3x3_convs_their_own_rank_and_alpha():
    pipe = build_tiny_pipeline("sd1")
    _adapt(pipe, type="lora", preset="full", rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0)
    conv = pipe.unet.down_blocks[0].resnets[0].conv1
    lin = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert conv.lora_A["default"].weight.shape[:2] == (2, conv.base_layer.in_channels)
    assert conv.lora_A["default"].weight.shape[2:] == (3, 3)
    assert conv.scaling["default"] == pytest.approx(1.0 / 2)
    assert lin.lora_A["default"].weight.shape[0] == 4 and lin.scaling["default"] == pytest.approx(2.0 / 4)


def test_rslora_scales_by_sqrt_rank():
    pipe = build_tiny_pipeline("sd1")
    _adapt(pipe, rank=4, alpha=2.0, rslora=True)
    assert pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.scaling["default"] == \
        pytest.approx(2.0 / 4 ** 0.5)


def test_presets_grow_attn_to_full():
    unet = build_tiny_pipeline("sd1").unet
    sizes = [len(resolve_targets(unet, "unet", preset=p).names) for p in UNET_PRESETS]
    assert sizes[0] < sizes[1] < sizes[2]
    full = resolve_targets(unet, "unet", preset="full")
    assert "down_blocks.0.resnets.0.conv1" in full.conv3x3 and "down_blocks.0.downsamplers.0.conv" in full.conv3x3
    assert all(not n.endswith("time_emb_proj") for n in full.conv3x3)


def test_text_encoder_mlp_in_attn_mlp_preset():
    te = build_tiny_pipeline("sd1").text_encoder
    names = resolve_targets(te, "text_encoder", preset="attn-mlp").names
    assert any(n.endswith("mlp.fc1") for n in names) and any(n.endswith("self_attn.q_proj") for n in names)


def test_cross_attention_only_and_regex_targets():
    unet = build_tiny_pipeline("sd1").unet
    cross = resolve_targets(unet, "unet", suffixes=["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"])
    assert cross.names and all(".attn2." in n for n in cross.names)
    regex = resolve_targets(unet, "unet", regex=r".*up_blocks.*attn1\.to_(q|v)")
    assert regex.names and all("up_blocks" in n and "attn1" in n for n in regex.names)


def test_targets_matching_nothing_is_a_clear_error():
    unet = build_tiny_pipeline("sd1").unet
    with pytest.raises(SdLoraError, match="match no Linear/Conv2d module of the unet"):
        resolve_targets(unet, "unet", suffixes=["no_such_layer"])


def test_only_adapter_weights_stay_fp32_on_a_bf16_base(tiny_sd1_dir):
    pipe, _ = load_pipeline(str(tiny_sd1_dir), torch_dtype=torch.bfloat16)
    _adapt(pipe, rank=4, alpha=4.0)
    assert all(p.dtype == torch.float32 for p in trainable_parameters(pipe.unet))
    assert pipe.unet.conv_in.weight.dtype == torch.bfloat16
