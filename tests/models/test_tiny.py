import pytest
import torch


@pytest.mark.parametrize("family,expected_pipe,prediction", [
    ("sd1", "StableDiffusionPipeline", "epsilon"),
    ("sd2", "StableDiffusionPipeline", "v_prediction"),
    ("sdxl", "StableDiffusionXLPipeline", "epsilon"),
])
def test_tiny_pipeline_saves_and_loads_offline(request, family, expected_pipe, prediction):
    from diffusers import DiffusionPipeline

    path = request.getfixturevalue(f"tiny_{family}_dir")
    pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    assert type(pipe).__name__ == expected_pipe
    assert pipe.scheduler.config.prediction_type == prediction
    out = pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3)


def test_tokenizer_merges_corpus_words(tmp_path):
    from transformers import CLIPTokenizer

    from sd_lora.models.tiny import write_tokenizer_files

    tok = CLIPTokenizer.from_pretrained(str(write_tokenizer_files(tmp_path, ["circle", "red"])))
    ids = tok("red circle").input_ids
    # bos, "red", "circle", eos: whole words are single tokens once merged
    assert len(ids) == 4
    assert len(tok("blue").input_ids) == 2 + 4  # unknown word falls back to characters
