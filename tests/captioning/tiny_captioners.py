"""Tiny captioners built in code (random weights, tokenizers made from a word list) and saved like hub models.

Each builder writes a folder `from_pretrained` (or onnxruntime) loads; nothing is downloaded.
"""

from __future__ import annotations

import csv
from pathlib import Path

WORDS = "a photo of cat dog red blue sitting on the grass What does image describe ? Describe with paragraph " \
        "what is shown in USER: ASSISTANT:".split()


def _tokenizer(special: list[str], **named):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(special)}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    unk = named.get("unk_token", "<unk>")
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins word-level tokens with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def _never_stop(model, tok) -> None:
    # Random weights often emit EOS or padding at once; tests need words, so generation runs to max_new_tokens.
    model.generation_config.eos_token_id = None
    model.generation_config.forced_eos_token_id = None
    model.generation_config.suppress_tokens = sorted(set(tok.all_special_ids))


def save_tiny_blip(folder: Path) -> Path:
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    torch.manual_seed(0)
    tok = _tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"], pad_token="[PAD]", unk_token="[UNK]",
                     cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", bos_token="[DEC]", model_max_length=64)
    config = BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=5, pad_token_id=0,
                         sep_token_id=3, eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32)
    model = BlipForConditionalGeneration(config).eval()
    _never_stop(model, tok)
    model.save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(folder)
    return folder


def save_tiny_florence(folder: Path) -> Path:
    import torch
    from transformers import (CLIPImageProcessorPil, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor)

    torch.manual_seed(0)
    tok = _tokenizer(["<pad>", "<s>", "</s>", "<unk>", "<image>"], pad_token="<pad>", unk_token="<unk>",
                     bos_token="<s>", eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    config = Florence2Config(
        vision_config=dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                           patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 2], num_groups=[2, 2],
                           window_size=2, projection_dim=32, drop_path_rate=0.0),
        text_config=dict(model_type="bart", vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                         max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         decoder_start_token_id=2, forced_bos_token_id=None),
        image_token_id=4)
    model = Florence2ForConditionalGeneration(config).eval()
    _never_stop(model, tok)
    model.save_pretrained(folder)
    images = CLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False, crop_size=None)
    images.image_seq_length = 17  # (32 / 8)^2 patches + the pooled token
    Florence2Processor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    return folder


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                 "{% if add_generation_prompt %}ASSISTANT: {% endif %}")


def save_tiny_llava(folder: Path) -> Path:
    import torch
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    torch.manual_seed(0)
    tok = _tokenizer(["<pad>", "<unk>", "<s>", "</s>", "<image>"], pad_token="<pad>", unk_token="<unk>",
                     bos_token="<s>", eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3),
        image_token_index=4, vision_feature_layer=-1, projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(config).eval()
    _never_stop(model, tok)
    model.save_pretrained(folder)
    LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                         crop_size={"height": 32, "width": 32}),
                   tokenizer=tok, patch_size=8, vision_feature_select_strategy="full",
                   chat_template=CHAT_TEMPLATE).save_pretrained(folder)
    return folder


# name, category (0 general, 4 character, 9 rating), fixed probability or a colour the tag follows
TAGGER_TAGS = [
    ("general", 9, 0.70), ("explicit", 9, 0.10),
    ("long_hair", 0, 0.90), ("smile", 0, 0.50), ("blurry", 0, 0.36), ("simple_background", 0, 0.20),
    ("^_^", 0, 0.80),
    ("hatsune_miku", 4, 0.90), ("kagamine_rin", 4, 0.60),
    ("red_theme", 0, "red"), ("blue_theme", 0, "blue"),
]


def save_tiny_tagger(folder: Path, size: int = 8, fixed_batch: bool = False) -> Path:
    """An ONNX tagger shaped like the WD v3 models (NHWC BGR 0-255 in, one probability per tag out).

    Tags with a number score that probability for every image; "red"/"blue" tags score ~1 when the image's mean
    red (blue) value is high, ~0 when low, so the test sees the colour order the model gets.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    weight = np.zeros((3, len(TAGGER_TAGS)), np.float32)  # rows: B, G, R channel means in [0, 1]
    bias = np.zeros(len(TAGGER_TAGS), np.float32)
    for i, (_, _, p) in enumerate(TAGGER_TAGS):
        if p == "red":
            weight[2, i], bias[i] = 40.0, -20.0
        elif p == "blue":
            weight[0, i], bias[i] = 40.0, -20.0
        else:
            bias[i] = np.log(p / (1 - p))
    batch = 1 if fixed_batch else "batch"
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
         helper.make_node("Mul", ["mean", "scale"], ["unit"]),
         helper.make_node("MatMul", ["unit", "weight"], ["logits0"]),
         helper.make_node("Add", ["logits0", "bias"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["output"])],
        "tiny_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, len(TAGGER_TAGS)])],
        [numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
         numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
         numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["tag_id", "name", "category", "count"])
        for i, (name, cat, _) in enumerate(TAGGER_TAGS):
            w.writerow([i, name, cat, 100])
    return folder


def save_tiny_clipseg(folder: Path) -> Path:
    import torch
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer
    from transformers import ViTImageProcessorPil

    from sd_lora.models.tiny import write_tokenizer_files

    import shutil

    torch.manual_seed(0)
    tok = CLIPTokenizer.from_pretrained(str(write_tokenizer_files(folder / "_tok", ["person", "dog", "text"])))
    shutil.rmtree(folder / "_tok")
    config = CLIPSegConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32, extract_layers=[1, 2], reduce_dim=16, decoder_num_attention_heads=2,
        decoder_intermediate_size=32)
    model = CLIPSegForImageSegmentation(config).eval()
    model.save_pretrained(folder)
    CLIPSegProcessor(image_processor=ViTImageProcessorPil(size={"height": 32, "width": 32}),
                     tokenizer=tok).save_pretrained(folder)
    return folder


def save_tiny_blip2(folder: Path) -> Path:
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil

    torch.manual_seed(0)
    tok = _tokenizer(["<pad>", "</s>", "<unk>"], pad_token="<pad>", unk_token="<unk>", bos_token="</s>",
                     eos_token="</s>")
    processor = Blip2Processor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                               tokenizer=tok, num_query_tokens=4)  # adds the <image> token to the vocabulary
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, encoder_hidden_size=32),
        text_config=dict(model_type="opt", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                         num_attention_heads=2, max_position_embeddings=128, word_embed_proj_dim=32, pad_token_id=0,
                         bos_token_id=1, eos_token_id=1),
        num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    model = Blip2ForConditionalGeneration(config).eval()
    _never_stop(model, tok)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
