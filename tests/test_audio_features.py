"""VGGish front end, network, weights loading and the embedding cache."""

from __future__ import annotations

import hashlib
import logging
import math

import numpy as np
import pytest
import soundfile
import torch

from aavs.datasets import audio_features as af
from aavs.datasets.errors import InputError
from aavs.datasets.layout import VideoRecord
from aavs.models.vggish import PCA_FEATURES, RANDOM_INIT_IDENTITY, RAW_FEATURES, load_vggish, random_vggish


# -------------------------------------------------------------------------- independent front end
def _hz_to_mel(f):
    return 1127.0 * math.log(1.0 + f / 700.0)


def _reference_mel_matrix():
    lo, hi = _hz_to_mel(125.0), _hz_to_mel(7500.0)
    edges = [lo + (hi - lo) * k / 65 for k in range(66)]
    weights = np.zeros((257, 64))
    for b in range(1, 257):  # bin 0 (DC) stays zero
        m = _hz_to_mel(8000.0 * b / 256)
        for i in range(64):
            lower, centre, upper = edges[i : i + 3]
            if lower < m <= centre:
                weights[b, i] = (m - lower) / (centre - lower)
            elif centre < m < upper:
                weights[b, i] = (upper - m) / (upper - centre)
    return weights


def _reference_examples(x):
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / 400) for n in range(400)])
    frames = 1 + (len(x) - 400) // 160
    spectrum = np.stack([np.abs(np.fft.rfft(x[i * 160 : i * 160 + 400] * window, 512)) for i in range(frames)])
    log_mel = np.log(spectrum @ _reference_mel_matrix() + 0.01)
    n = frames // 96
    return log_mel[: n * 96].reshape(n, 1, 96, 64)


def test_mel_matrix_matches_reference():
    np.testing.assert_allclose(af.mel_matrix().numpy(), _reference_mel_matrix(), atol=1e-12)


def test_log_mel_examples_match_reference():
    rng = np.random.default_rng(0)
    t = np.arange(int(2.5 * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.normal(size=t.shape)
    examples = af.waveform_to_examples(x, 16000)
    assert examples.shape == (2, 1, 96, 64) and examples.dtype == torch.float32
    np.testing.assert_allclose(examples.numpy(), _reference_examples(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seconds, expected", [(5.0, 5), (10.0, 10), (0.98, 1), (0.5, 0), (0.01, 0)])
def test_example_count(seconds, expected):
    assert af.waveform_to_examples(np.zeros(int(seconds * 16000)), 16000).shape[0] == expected


def test_stereo_44k_is_mixed_to_mono_and_resampled(tmp_path):
    t = np.arange(3 * 44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    path = tmp_path / "a.wav"
    soundfile.write(path, np.stack([tone, tone], axis=1), 44100, subtype="FLOAT")
    samples, rate = af.read_audio(path)
    examples = af.waveform_to_examples(samples, rate)  # [3, 1, 96, 64]
    assert examples.shape[0] == 3
    band = int(examples[:, 0, 10:-10].mean((0, 1)).argmax())
    centres = [_hz_to_mel(125) + (_hz_to_mel(7500) - _hz_to_mel(125)) * (k + 1) / 65 for k in range(64)]
    assert band == int(np.argmin([abs(c - _hz_to_mel(1000)) for c in centres]))
    soundfile.write(path, np.stack([tone, -tone], axis=1), 44100, subtype="FLOAT")  # cancels in the mono mix
    silent = af.waveform_to_examples(*af.read_audio(path))
    np.testing.assert_allclose(silent.numpy(), math.log(0.01), atol=1e-3)


def test_read_audio_errors(tmp_path):
    with pytest.raises(InputError, match=r"missing\.wav: audio file missing"):
        af.read_audio(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(InputError, match=r"bad\.wav: audio not decodable"):
        af.read_audio(tmp_path / "bad.wav")


# ------------------------------------------------------------------------------------------ VGGish
EXPECTED_KEYS = sorted(
    f"{m}.{i}.{p}"
    for m, idx in (("features", (0, 3, 6, 8, 11, 13)), ("embeddings", (0, 2, 4)))
    for i in idx
    for p in ("weight", "bias")
)


def test_vggish_parameter_names_shapes_and_nhwc_flatten():
    model = random_vggish().eval()
    state = model.state_dict()
    assert sorted(state) == EXPECTED_KEYS
    assert state["features.0.weight"].shape == (64, 1, 3, 3) and state["features.13.weight"].shape == (512, 512, 3, 3)
    assert state["embeddings.0.weight"].shape == (4096, 512 * 4 * 6) and state["embeddings.4.weight"].shape == (
        128,
        4096,
    )
    x = torch.randn(2, 1, 96, 64)
    seen = {}

    def keep_input(module, inputs, output):
        seen["in"] = inputs[0]

    model.embeddings.register_forward_hook(keep_input)
    with torch.no_grad():
        out = model(x)
        fmap = model.features(x)  # [2, 512, 6, 4]
    assert fmap.shape == (2, 512, 6, 4) and out.shape == (2, 128)
    torch.testing.assert_close(seen["in"], fmap.permute(0, 2, 3, 1).reshape(2, -1))  # NHWC order


def _last_fc_by_hand(model, x):
    """The last Linear's output, from the layers' parameters (the release's port's layer indices)."""
    state = model.state_dict()
    h = model.features(x).permute(0, 2, 3, 1).flatten(1)
    h = torch.relu(torch.nn.functional.linear(h, state["embeddings.0.weight"], state["embeddings.0.bias"]))
    h = torch.relu(torch.nn.functional.linear(h, state["embeddings.2.weight"], state["embeddings.2.bias"]))
    return torch.nn.functional.linear(h, state["embeddings.4.weight"], state["embeddings.4.bias"])


@pytest.mark.parametrize("loaded", [False, True])
def test_default_embedding_is_the_raw_last_linear_output(loaded, weights_file):
    model = load_vggish(weights_file[0])[0] if loaded else random_vggish().eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen = {}
    last.register_forward_hook(lambda module, inputs, output: seen.update(out=output.clone()))
    x = torch.randn(4, 1, 96, 64)
    with torch.no_grad():
        out = model(x)
        by_hand = _last_fc_by_hand(model, x)
    torch.testing.assert_close(out, seen["out"], rtol=0, atol=0)  # nothing after the last Linear
    torch.testing.assert_close(out, by_hand, rtol=1e-4, atol=1e-4)
    assert (out < 0).any() and (out > 0).any()  # signed: no ReLU
    assert not torch.equal(out, out.round())  # not quantised


def test_random_init_is_deterministic_and_leaves_global_rng(caplog):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with caplog.at_level(logging.WARNING):
        a, identity = load_vggish()
    assert identity == RANDOM_INIT_IDENTITY
    assert "randomly initialised VGGish" in caplog.text and "only meaningful for tests" in caplog.text
    assert torch.equal(torch.get_rng_state(), before)
    b = random_vggish()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in EXPECTED_KEYS)
    assert a.state_dict()["embeddings.4.weight"].std() > 0.01  # He init, not all zeros


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A VGGish weights file in the release's format (random, but not the random-init network)."""
    source = random_vggish()
    with torch.no_grad():
        source.embeddings[4].bias.add_(0.25)
    path = tmp_path_factory.mktemp("weights") / "vggish.pth"
    torch.save(source.state_dict(), path)
    return path, source.state_dict()


def test_load_weights_and_pca(tmp_path, weights_file):
    weights, source_state = weights_file
    model, identity = load_vggish(weights)
    assert identity.startswith("sha256-") and identity != RANDOM_INIT_IDENTITY
    assert torch.equal(model.state_dict()["embeddings.4.bias"], source_state["embeddings.4.bias"])

    rng = np.random.default_rng(0)
    eigen = torch.from_numpy(rng.normal(size=(128, 128)).astype(np.float32))
    means = torch.from_numpy(rng.normal(size=(128, 1)).astype(np.float32))  # the release stores [128, 1]
    pca = tmp_path / "pca.pth"
    torch.save({"pca_eigen_vectors": eigen, "pca_means": means}, pca)
    with_pca, identity_pca = load_vggish(weights, pca)
    assert identity_pca not in (identity, RANDOM_INIT_IDENTITY)
    x = torch.randn(3, 1, 96, 64)
    with torch.no_grad():
        raw, post = model(x).numpy(), with_pca(x).numpy()
    expected = (raw - means.numpy().T) @ eigen.numpy().T
    expected = np.round((np.clip(expected, -2, 2) + 2) * 255 / 4)
    np.testing.assert_allclose(post, expected, atol=1e-3)
    assert post.min() >= 0 and post.max() <= 255


def test_load_errors_name_file_and_keys(tmp_path, weights_file):
    with pytest.raises(InputError, match=r"nothere\.pth: VGGish file missing"):
        load_vggish(tmp_path / "nothere.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(InputError, match=r"bad\.pth: not a VGGish state dict: missing keys \['embeddings\.0\.bias'"):
        load_vggish(bad)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=r"junk\.pth: not a loadable torch file \(expected the converted VGGish"):
        load_vggish(tmp_path / "junk.pth")
    weights = weights_file[0]
    torch.save({"pca_means": torch.zeros(128)}, tmp_path / "p.pth")
    with pytest.raises(
        InputError, match=r"p\.pth: VGGish PCA file has keys \['pca_means'\], expected keys pca_eigen_vectors"
    ):
        load_vggish(weights, tmp_path / "p.pth")
    with pytest.raises(InputError, match="without VGGish weights"):
        load_vggish(None, tmp_path / "p.pth")


# -------------------------------------------------------------------------------------------- cache
def _clip(folder, uid, freq, seconds=2):
    t = np.arange(seconds * 16000) / 16000
    path = folder / "v1s" / uid / "audio.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * freq * t), 16000, subtype="PCM_16")
    return VideoRecord(uid, "v1s", "test")


def test_embed_videos_caches_and_invalidates(tmp_path, monkeypatch, weights_file):
    records = [_clip(tmp_path, "a", 300), _clip(tmp_path, "b", 2000)]
    calls = []
    real = af.embed_clip
    monkeypatch.setattr(af, "embed_clip", lambda path, model: calls.append(path.parent.name) or real(path, model))
    cache = tmp_path / "cache"
    first = af.embed_videos(tmp_path, records, cache_dir=cache)
    assert calls == ["a", "b"] and first["a"].shape == (2, 128) and first["a"].dtype == np.float32
    np.testing.assert_array_equal(first["a"], real(records[0].audio_path(tmp_path), random_vggish().eval()))
    assert not np.allclose(first["a"], first["b"])
    assert len(list(cache.rglob("*.npy"))) == 2

    again = af.embed_videos(tmp_path, records, cache_dir=cache)  # warm: nothing computed
    assert calls == ["a", "b"] and all(np.array_equal(first[u], again[u]) for u in "ab")

    _clip(tmp_path, "a", 700)  # changed wav bytes -> recomputed
    changed = af.embed_videos(tmp_path, records, cache_dir=cache)
    assert calls == ["a", "b", "a"] and not np.allclose(changed["a"], first["a"])

    weights = weights_file[0]  # other weights -> other cache entries
    other = af.embed_videos(tmp_path, records, vggish=weights, cache_dir=cache)
    assert calls[-2:] == ["a", "b"] and not np.allclose(other["b"], first["b"])


def _pca_file(folder):
    rng = np.random.default_rng(1)
    path = folder / "pca.pth"
    torch.save(
        {
            "pca_eigen_vectors": torch.from_numpy(rng.normal(size=(128, 128)).astype(np.float32)),
            "pca_means": torch.from_numpy(rng.normal(size=(128, 1)).astype(np.float32)),
        },
        path,
    )
    return path


def test_raw_and_pca_embeddings_have_separate_cache_entries(tmp_path, weights_file):
    assert af.cache_key("some-weights", RAW_FEATURES) != af.cache_key("some-weights", PCA_FEATURES)
    records = [_clip(tmp_path, "a", 300)]
    cache, weights, pca = tmp_path / "cache", weights_file[0], _pca_file(tmp_path)
    raw = af.embed_videos(tmp_path, records, vggish=weights, cache_dir=cache)["a"]
    post = af.embed_videos(tmp_path, records, vggish=weights, vggish_pca=pca, cache_dir=cache)["a"]
    entries = sorted(cache.rglob("*.npy"))
    assert len(entries) == 2 and entries[0].name == entries[1].name and entries[0].parent != entries[1].parent
    assert raw.min() < 0 and not np.array_equal(raw, np.round(raw))
    assert post.min() >= 0 and post.max() <= 255 and np.array_equal(post, np.round(post))
    np.testing.assert_array_equal(af.embed_videos(tmp_path, records, vggish=weights, cache_dir=cache)["a"], raw)
    np.testing.assert_array_equal(
        af.embed_videos(tmp_path, records, vggish=weights, vggish_pca=pca, cache_dir=cache)["a"], post
    )


def test_entry_under_the_old_key_format_is_not_reused(tmp_path, monkeypatch):
    """The old code keyed the folder by front end and weights only; its (ReLU'd) entries must be ignored."""
    records = [_clip(tmp_path, "a", 300)]
    wav = records[0].audio_path(tmp_path)
    old_key = hashlib.sha256(f"{af.FRONT_END_VERSION}:{RANDOM_INIT_IDENTITY}".encode()).hexdigest()[:24]
    assert af.cache_key(RANDOM_INIT_IDENTITY, RAW_FEATURES) != old_key
    stale = tmp_path / "cache" / old_key / f"{hashlib.sha256(wav.read_bytes()).hexdigest()}.npy"
    stale.parent.mkdir(parents=True)
    np.save(stale, np.full((2, 128), 7.0, dtype=np.float32))
    calls = []
    real = af.embed_clip
    monkeypatch.setattr(af, "embed_clip", lambda path, model: calls.append(path) or real(path, model))
    got = af.embed_videos(tmp_path, records, cache_dir=tmp_path / "cache")["a"]
    assert calls == [wav]
    np.testing.assert_array_equal(got, real(wav, random_vggish().eval()))


def test_damaged_cache_entry_is_recomputed(tmp_path):
    records = [_clip(tmp_path, "a", 300)]
    cache = tmp_path / "cache"
    good = af.embed_videos(tmp_path, records, cache_dir=cache)["a"]
    (entry,) = cache.rglob("*.npy")
    entry.write_bytes(b"truncated")
    np.testing.assert_array_equal(af.embed_videos(tmp_path, records, cache_dir=cache)["a"], good)


def test_default_cache_dir_is_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AAVS_CACHE_DIR", str(tmp_path / "c"))
    assert af.default_cache_dir() == tmp_path / "c"
    records = [_clip(tmp_path, "a", 300)]
    af.embed_videos(tmp_path, records)
    assert len(list((tmp_path / "c").rglob("*.npy"))) == 1


def test_too_short_clip_is_an_input_error(tmp_path):
    path = tmp_path / "v1s" / "s" / "audio.wav"
    path.parent.mkdir(parents=True)
    soundfile.write(path, np.zeros(8000), 16000)
    with pytest.raises(InputError, match=r"audio\.wav: shorter than one VGGish example"):
        af.embed_videos(tmp_path, [VideoRecord("s", "v1s", "test")], cache_dir=tmp_path / "c")


def test_align_to_frames():
    emb = np.arange(3 * 128, dtype=np.float32).reshape(3, 128)
    np.testing.assert_array_equal(af.align_to_frames(emb, 5), emb[[0, 1, 2, 2, 2]])
    np.testing.assert_array_equal(af.align_to_frames(emb, 2), emb[:2])


def test_random_init_warning_even_on_a_warm_cache(tmp_path, caplog):
    records = [_clip(tmp_path, "a", 300)]
    af.embed_videos(tmp_path, records, cache_dir=tmp_path / "c")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        af.embed_videos(tmp_path, records, cache_dir=tmp_path / "c")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "randomly initialised VGGish" in caplog.text
