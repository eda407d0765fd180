"""The ``large`` preset's checkpoints at their published width with fewer layers (issue 17, item 7).

Whisper large-v3 and NLLB-200-3.3B cannot be exported on a 24 GB machine at full depth, but
every layer of a transformer is the same size: a checkpoint at the real width with 1 or 2
encoder and decoder layers, exported and served by polydub's own code, measures what does not
grow with depth (embeddings, the vocabulary projection, the runtime) and, by difference, what
each layer adds. ``bench.large_size`` fits those and extrapolates to the real depth.

A repository here is the ``small`` one's Hub layout (``tests.hub``: tokenizer, generation
config, preprocessor) with the config's dimensions replaced and random weights at that shape.
What stays the small model's: Whisper's tokenizer (51865 ids, large-v3 has 51866: one row of
1280 floats) and NLLB's offline sentencepiece (its model rows are the real 256206).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.hub.build import NLLB, WHISPER, build_repo, write_json

# The published configs' dimensions (openai/whisper-large-v3, facebook/nllb-200-3.3B).
WHISPER_LARGE = {"d_model": 1280, "heads": 20, "ffn": 5120, "layers": 32, "num_mel_bins": 128}
NLLB_LARGE = {"d_model": 2048, "heads": 16, "ffn": 8192, "layers": 24}
LARGE_REPOS = {"whisper": "openai/whisper-large-v3", "nllb": "facebook/nllb-200-3.3B"}
SMALL_REPOS = {"whisper": WHISPER, "nllb": NLLB}
CROSS_CACHE = re.compile(r'(key: "cross_cache_mib" value \{ string_value: ")(\d+)(")')


def real_layers(family: str) -> int:
    return (WHISPER_LARGE if family == "whisper" else NLLB_LARGE)["layers"]


def build_large(family: str, out: Path, layers: int) -> Path:
    """``family``'s large checkpoint at full width with ``layers`` encoder and decoder layers."""
    import torch
    import transformers

    from tests.hub.transformers_repos import NLLB_REAL_VOCAB, model_from_config, save_safetensors

    if layers < 1:
        raise ValueError("layers must be >= 1")
    build_repo(SMALL_REPOS[family], out, scale="ci")  # the layout; its tiny weights are replaced
    config: dict[str, Any] = json.loads((out / "config.json").read_text())
    dims = WHISPER_LARGE if family == "whisper" else NLLB_LARGE
    config.update(
        d_model=dims["d_model"],
        encoder_attention_heads=dims["heads"],
        decoder_attention_heads=dims["heads"],
        encoder_ffn_dim=dims["ffn"],
        decoder_ffn_dim=dims["ffn"],
        encoder_layers=layers,
        decoder_layers=layers,
        num_hidden_layers=layers,
        _name_or_path=LARGE_REPOS[family],
    )
    torch.manual_seed(layers)
    if family == "whisper":
        config["num_mel_bins"] = dims["num_mel_bins"]
        _whisper_large_files(out, layers)
        model = model_from_config(
            transformers.WhisperForConditionalGeneration, transformers.WhisperConfig, config
        )
        save_safetensors(model, out)
    else:
        config["vocab_size"] = NLLB_REAL_VOCAB
        model = model_from_config(
            transformers.M2M100ForConditionalGeneration, transformers.M2M100Config, config
        )
        torch.save(model.state_dict(), out / "pytorch_model.bin")
    write_json(out / "config.json", config)
    return out


def _whisper_large_files(out: Path, layers: int) -> None:
    """large-v3's 128-bin log-mel front end, and alignment heads inside the built layers."""
    import transformers

    hf: Any = transformers  # untyped
    extractor = hf.WhisperFeatureExtractor(feature_size=WHISPER_LARGE["num_mel_bins"])
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    preprocessor["feature_size"] = WHISPER_LARGE["num_mel_bins"]
    preprocessor["mel_filters"] = extractor.mel_filters.T.tolist()
    write_json(out / "preprocessor_config.json", preprocessor)
    generation = json.loads((out / "generation_config.json").read_text())
    generation["alignment_heads"] = [[layers - 1, head] for head in range(4)]
    write_json(out / "generation_config.json", generation)


def scale_to_depth(templates: Path, repository: Path, layers: int) -> int | None:
    """Whisper's served config with its ``cross_cache_mib`` scaled by ``layers`` / 32, written
    into ``repository``: a decoding group then holds as many windows as at the real depth, so a
    shallow export's memory extrapolates to the real one's. Returns the scaled bound (None: no
    Whisper there)."""
    target = repository / "whisper" / "config.pbtxt"
    if not target.parent.is_dir():
        return None
    text = (templates / "whisper" / "config.pbtxt").read_text()
    found = CROSS_CACHE.search(text)
    if found is None:
        raise ValueError("the whisper config template sets no cross_cache_mib")
    scaled = max(1, int(found.group(2)) * layers // WHISPER_LARGE["layers"])
    target.write_text(CROSS_CACHE.sub(rf"\g<1>{scaled}\g<3>", text))
    return scaled
