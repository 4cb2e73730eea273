import pytest
import torch

from sd_lora.adapters.lora import inject_lora, lora_config, trainable_parameters
from sd_lora.errors import SdLoraError
from sd_lora.models.load import load_pipeline


def _image(pipe):
    return pipe("a red circle", num_inference_steps=3, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(1)).images


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_fresh_adapters_reproduce_the_base_image(request, family):
    pipe, _ = load_pipeline(str(request.getfixturevalue(f"tiny_{family}_dir")))
    base = _image(pipe)
    n_unet = inject_lora(pipe.unet, lora_config(["to_q", "to_k", "to_v", "to_out.0"], 4, 4.0))
    n_te = inject_lora(pipe.text_encoder, lora_config(["q_proj", "k_proj", "v_proj", "out_proj"], 4, 4.0))
    assert n_unet > 0 and n_te == 4 * pipe.text_encoder.config.num_hidden_layers
    adapted = _image(pipe)
    assert (adapted == base).all()
    # the adapter is really in the forward path: a non-zero B changes the image
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    assert not torch.allclose(torch.from_numpy(_image(pipe)), torch.from_numpy(base), atol=1e-3)


def test_only_adapter_weights_train_and_stay_fp32(tiny_sd1_dir):
    pipe, _ = load_pipeline(str(tiny_sd1_dir), torch_dtype=torch.bfloat16)
    inject_lora(pipe.unet, lora_config(["to_q", "to_v"], 4, 4.0))
    params = trainable_parameters(pipe.unet)
    names = [n for n, p in pipe.unet.named_parameters() if p.requires_grad]
    assert params and all("lora_" in n for n in names)
    assert all(p.dtype == torch.float32 for p in params)
    assert pipe.unet.conv_in.weight.dtype == torch.bfloat16


def test_cross_attention_only_targets(tiny_sd1_dir):
    pipe, _ = load_pipeline(str(tiny_sd1_dir))
    inject_lora(pipe.unet, lora_config(["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"], 4, 4.0))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in pipe.unet.named_parameters() if "lora_A" in n}
    assert adapted and all(".attn2." in n for n in adapted)


def test_targets_matching_nothing_is_a_clear_error(tiny_sd1_dir):
    pipe, _ = load_pipeline(str(tiny_sd1_dir))
    with pytest.raises(SdLoraError, match="match no module"):
        inject_lora(pipe.unet, lora_config(["no_such_layer"], 4, 4.0))
