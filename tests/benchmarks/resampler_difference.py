"""How far our resampler (torchaudio's) moves VGGish's input from the reference's (resampy's, which
towhee's VGGish pipeline calls with its default ``kaiser_best`` filter) for a wav that is not at 16 kHz
(docs/method.md §8): relative differences of the 16 kHz waveforms, of the log-mel examples and of the
embeddings (the seeded random VGGish), and where in the spectrum the waveforms differ.

resampy is not a dependency of aavs; install it beside the venv for this measurement only::

    .venv/bin/python -m pip install --target /tmp/resampy resampy==0.4.3
    PYTHONPATH=/tmp/resampy .venv/bin/python tests/benchmarks/resampler_difference.py --rate 44100

The clip is synthetic, 10 s at ``--rate``, as a 16-bit wav reads: harmonic notes (fundamentals 110 to
880 Hz, 8 harmonics each), a chirp from 200 Hz to 12 kHz and noise bursts, so that there is sound on
both sides of the 8 kHz the resampling cuts at.
"""

from __future__ import annotations

import argparse

import numpy as np
import resampy
import torch
import torchaudio.functional as AF

from aavs.datasets.audio_features import SAMPLE_RATE, embed_examples, waveform_to_examples
from aavs.models.vggish import random_vggish

BANDS = ((0, 7000), (7000, 7500), (7500, 7900), (7900, 8001))  # Hz; VGGish's mel bands end at 7500


def clip(rate: int, seconds: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(seconds * rate) / rate
    x = np.zeros_like(t)
    for k, f0 in enumerate([110, 220, 330, 440, 660, 880, 523, 247, 392, 784]):
        envelope = np.exp(-3 * np.clip(t - k, 0, None)) * (t >= k)
        for h in range(1, 9):
            x += envelope * np.sin(2 * np.pi * f0 * h * t) / h
    x += 0.3 * np.sin(2 * np.pi * (200 * t + 590 * t**2))  # 200 Hz -> 12 kHz over 10 s
    x += 0.2 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 0.7 * t) > 0.6)
    return (x / np.abs(x).max() * 0.9 * 32767).astype(np.int16).astype(np.float64) / 32768.0


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=44100, help="the clip's sample rate (Hz)")
    rate = parser.parse_args().rate
    torch.set_num_threads(1)
    x = clip(rate)
    ours = AF.resample(torch.from_numpy(x), rate, SAMPLE_RATE).numpy()
    theirs = resampy.resample(x, rate, SAMPLE_RATE)  # filter="kaiser_best", resampy's default
    n = min(len(ours), len(theirs))
    print(f"{rate} Hz -> {SAMPLE_RATE} Hz: {len(ours)} samples (torchaudio), {len(theirs)} (resampy)")
    print(f"waveform   relative L2 difference {relative(ours[:n], theirs[:n]):.2e}")
    power = lambda s: np.abs(np.fft.rfft(s[:n])) ** 2  # noqa: E731
    freq = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    diff, ref = power(ours - theirs), power(theirs)
    for lo, hi in BANDS:
        band = (freq >= lo) & (freq < hi)
        print(
            f"  {lo:>5}-{hi:<5} Hz: {diff[band].sum() / diff.sum():6.1%} of the difference's energy, "
            f"relative to the sound there {np.sqrt(diff[band].sum() / ref[band].sum()):.2e}"
        )
    ex_ours, ex_theirs = waveform_to_examples(ours, SAMPLE_RATE), waveform_to_examples(theirs, SAMPLE_RATE)
    gap = (ex_ours - ex_theirs).abs()
    print(
        f"log-mel    relative L2 difference {relative(ex_ours.numpy(), ex_theirs.numpy()):.2e}; mean |difference| "
        f"{gap.mean():.3f}, 99th percentile {gap.flatten().quantile(0.99):.3f} (the examples' std {ex_theirs.std():.2f})"
    )
    model = random_vggish().eval()
    e_ours, e_theirs = embed_examples(ex_ours, model), embed_examples(ex_theirs, model)
    cosine = (e_ours * e_theirs).sum(1) / np.linalg.norm(e_ours, axis=1) / np.linalg.norm(e_theirs, axis=1)
    print(
        f"embedding  relative L2 difference {relative(e_ours, e_theirs):.2e}; per-second cosine similarity "
        f"min {cosine.min():.4f} over {len(cosine)} seconds"
    )


if __name__ == "__main__":
    main()
