"""Any video file as AVSBench-style inputs: one frame per second and its audio, streamed with PyAV.

Frames: second ``t`` is the frame ffmpeg's 1 fps conversion (the ``fps=1`` filter, default rounding)
picks, the frame on screen just before ``t + 0.5`` s: each decoded frame at ``p`` seconds from the
stream's start goes to second ``round(p)`` (halves up), second ``t`` keeps the last frame sent to it or,
when none is, repeats the previous second's; a clip of ``D`` seconds gives ``round(D)`` seconds. That is
what AVSBench's ffmpeg extraction at 1 fps stored as ``frames/<t>.jpg``. Frames are converted to RGB and
resized as the data set reader does (:func:`aavs.datasets.transforms.resize_frame`, PIL bilinear).

Audio: the first audio track, averaged to mono in float64 at its own rate (as ``read_audio`` reads a
wav); 16-bit PCM becomes ``x / 32768`` exactly as libsndfile gives it. A clip is cut into windows of the
training clips' length (:data:`WINDOW_SECONDS`) and each window's audio is framed from the window's
start, so a 10-second clip gets the embeddings its ``audio.wav`` would and a long clip never drifts.
A video without an audio track is silence.

Nothing holds more than one window: frames and samples are decoded as a stream, and files are opened
once per pass (frames, audio), so memory does not grow with the clip's length.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aavs.datasets.audio_features import (
    EXAMPLE_FRAMES,
    HOP,
    SAMPLE_RATE,
    WINDOW,
    EmbeddingCache,
    align_to_frames,
    embed_examples,
    waveform_to_examples,
)
from aavs.datasets.errors import InputError
from aavs.datasets.layout import FRAMES_PER_SUBSET
from aavs.datasets.transforms import resize_frame
from aavs.models.vggish import feature_mode, load_vggish, weights_identity

if TYPE_CHECKING:  # imported when first needed (_av), named in annotations
    import av

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
WINDOW_SECONDS = max(FRAMES_PER_SUBSET.values())  # the longest training clip (AVSBench v2: 10 s)
# A clip whose decoded video ends this much before the length its header declares is truncated.
TRUNCATION_SLACK_S = 1.0
# Full-scale value of integer sample formats (libsndfile's normalisation of PCM).
EXAMPLE_SAMPLES = WINDOW + (EXAMPLE_FRAMES - 1) * HOP  # 16 kHz samples of one VGGish example
_SAMPLE_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


def find_videos(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> list[tuple[Path, str]]:
    """``(file, name)`` of each video: files as given (whatever their suffix: a bad one fails on its own
    later), named by their stem; for folders, their video files by suffix, sorted, in subfolders too
    unless not ``recursive``, named by their path in the folder without the suffix (``sub/clip``). A
    path that does not exist is kept so that it fails by name."""
    found: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = item.rglob("*") if recursive else item.iterdir()
            videos = sorted(p for p in files if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            found += [(p, p.relative_to(item).with_suffix("").as_posix()) for p in videos]
        else:
            found.append((item, item.stem))
    return found


# ------------------------------------------------------------------------------------- opening
def _av() -> ModuleType:
    """PyAV, imported on first use."""
    import av  # here, not at the top: PyAV loads FFmpeg's libraries, which only video input needs

    return av


@contextlib.contextmanager
def open_video(path: str | os.PathLike) -> Iterator[av.container.InputContainer]:
    """The container of a video file; every decoding failure inside becomes an :class:`InputError`."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise InputError(
            f"{path}: not a readable video (empty, truncated or not a media file: "
            f"{getattr(err, 'strerror', None) or err})"
        ) from None
    try:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise InputError(f"{path}: no video stream ({kinds})")
        yield container
    except av.FFmpegError as err:
        raise InputError(f"{path}: corrupt or truncated video ({err.strerror or err})") from None
    finally:
        container.close()


def _time_base(timed: av.stream.Stream | av.frame.Frame) -> Fraction:
    """The time base of a demuxed stream or a decoded frame, which FFmpeg always sets (PyAV's types
    allow None)."""
    if timed.time_base is None:
        raise InputError(f"{timed}: no time base (not a timed media stream)")
    return timed.time_base


def _start(stream: av.video.stream.VideoStream) -> Fraction:
    return Fraction(stream.start_time or 0) * _time_base(stream)


def _declared_seconds(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration:
        return float(stream.duration * _time_base(stream))
    return container.duration / 1e6 if container.duration else None


@dataclass(frozen=True)
class VideoInfo:
    """What the header says: frame rate (None when unknown), size, declared length, audio present."""

    path: Path
    fps: float | None
    width: int
    height: int
    seconds: float | None
    has_audio: bool


def probe(path: str | os.PathLike) -> VideoInfo:
    with open_video(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            Path(path),
            float(rate) if rate else None,
            stream.codec_context.width,
            stream.codec_context.height,
            _declared_seconds(container, stream),
            bool(container.streams.audio),
        )


# -------------------------------------------------------------------------------------- frames
def second_of(time_s: Fraction) -> int:
    """The second a frame at ``time_s`` goes to under ffmpeg's fps=1 (round to nearest, halves up)."""
    return math.floor(time_s + Fraction(1, 2))


def iter_timed_frames(
    path: str | os.PathLike, threads: bool = True
) -> Iterator[tuple[Fraction, Fraction, av.VideoFrame]]:
    """(start, end, frame) of every decoded frame, in seconds from the video stream's start; ``end`` is
    the next frame's start (the last frame lasts its own duration, or one frame period). A clip whose
    frames stop well before the length its header declares is refused as truncated. ``threads``: FFmpeg
    decodes with frame and slice threads (faster alone, more CPU in all); else in this thread only (for
    work that already runs beside other work: a third less CPU time)."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        if threads:
            stream.thread_type = "AUTO"
        else:
            stream.thread_type = "NONE"
            stream.codec_context.thread_count = 1
        origin = _start(stream)
        previous: tuple[Fraction, av.VideoFrame] | None = None
        end = Fraction(0)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            time_s = Fraction(frame.pts) * _time_base(frame) - origin
            if previous is not None:
                yield previous[0], time_s, previous[1]
            previous = (time_s, frame)
        if previous is not None:
            end = previous[0] + _frame_duration(previous[1], stream)
            yield previous[0], end, previous[1]
        declared = _declared_seconds(container, stream)
        if declared is not None and end < declared - TRUNCATION_SLACK_S:
            raise InputError(
                f"{path}: truncated video (its frames end at {float(end):.2f} s of the "
                f"{declared:.2f} s its header declares)"
            )


def _frame_duration(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> Fraction:
    if frame.duration:
        return Fraction(frame.duration) * _time_base(frame)
    rate = stream.average_rate or stream.guessed_rate
    return Fraction(1) / Fraction(rate) if rate else Fraction(0)


def iter_second_frames(path: str | os.PathLike, size: int | None = None) -> Iterator[np.ndarray]:
    """One RGB uint8 frame per second (see the module docstring), resized to ``size`` when given."""
    held, second, end = None, 0, Fraction(0)
    for start, end, frame in iter_timed_frames(path):  # noqa: B007 - the last frame's end is read after the loop
        target = second_of(start)
        if held is not None and target > second:
            image = _rgb(held, size)
            for _ in range(second, target):
                yield image
            second = target
        held = frame
    if held is not None:
        image = _rgb(held, size)
        for _ in range(second, max(second_of(end), second)):
            yield image


def _rgb(frame: av.VideoFrame, size: int | None) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    return rgb if size is None else resize_frame(rgb, size)


# ----------------------------------------------------------------------------- yuv420p frames
def as_yuv420p(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> av.VideoFrame:
    """A decoded frame as yuv420p, unconverted when it is (its planes as decoded; an odd width or height
    is left for :func:`yuv420p_planes` to crop), or scaled (bilinear) to ``size`` (width, height). Any
    other format (RGB, 4:2:2, 4:4:4, full-range JPEG, 10-bit) goes the way an encoder fed RGB takes it:
    to RGB (cropped to even width and height), then to yuv420p (BT.601)."""
    if frame.format.name != "yuv420p":
        rgb = frame.to_ndarray(format="rgb24")
        frame = _av().VideoFrame.from_ndarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2], format="rgb24")
    elif size is None:
        return frame
    width, height = size or (frame.width, frame.height)
    return frame.reformat(width=width, height=height, format="yuv420p", interpolation="BILINEAR")


def yuv420p_planes(frame: av.VideoFrame, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views (no copy; writable) of the Y, U and V planes of a yuv420p frame's top-left ``width`` x
    ``height`` pixels (both even): Y ``[height, width]``, U and V ``[height / 2, width / 2]``."""
    sizes = ((height, width), (height // 2, width // 2), (height // 2, width // 2))
    y, u, v = (
        np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)[:rows, :cols]
        for plane, (rows, cols) in zip(frame.planes, sizes, strict=True)
    )
    return y, u, v


def new_yuv420p(width: int, height: int) -> av.VideoFrame:
    """An uninitialised yuv420p frame of ``width`` x ``height`` pixels, with no decoder's metadata."""
    return _av().VideoFrame(width, height, "yuv420p")


# --------------------------------------------------------------------------------------- audio
def _mono(frame: av.AudioFrame) -> np.ndarray:
    """float64 mono samples of one decoded audio frame (channels averaged, integers at full scale)."""
    fmt = frame.format
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    data = data.reshape(channels, -1) if fmt.is_planar else data.reshape(-1, channels).T  # [C, n]
    base = fmt.name.rstrip("p")
    samples = data.astype(np.float64)
    if base == "u8":
        samples -= 128.0
    if base in _SAMPLE_SCALE:
        samples /= _SAMPLE_SCALE[base]
    return samples.mean(axis=0)


def iter_audio_windows(path: str | os.PathLike, seconds: int = WINDOW_SECONDS) -> Iterator[tuple[np.ndarray, int]]:
    """(mono float64 samples, rate) of each ``seconds``-long window of the first audio track, from its
    first sample; the last window holds what is left. Nothing when the video has no audio track."""
    with open_video(path) as container:
        if not container.streams.audio:
            return
        stream = container.streams.audio[0]
        pending: list[np.ndarray] = []
        held, rate = 0, None
        for frame in container.decode(stream):
            if rate is None:
                rate = frame.sample_rate
            elif frame.sample_rate != rate:
                raise InputError(f"{path}: the audio's sample rate changes from {rate} to {frame.sample_rate} Hz")
            pending.append(_mono(frame))
            held += pending[-1].size
            while held >= seconds * rate:
                joined = np.concatenate(pending)
                yield joined[: seconds * rate], rate
                pending, held = [joined[seconds * rate :]], joined.size - seconds * rate
        if held and rate is not None:
            yield np.concatenate(pending), rate


def audio_sha(samples: np.ndarray, rate: int) -> str:
    """The cache name of decoded audio: sha256 of its rate and float64 mono samples."""
    digest = hashlib.sha256(f"pcm-f64-mono:{rate}:".encode())
    digest.update(np.ascontiguousarray(samples, dtype=np.float64).tobytes())
    return digest.hexdigest()


class WindowEmbedder:
    """VGGish embeddings of a window's audio through the training's front end and disk cache.

    The network is loaded on the first cache miss. Missing audio (no track, or the track ended) is
    silence; audio shorter than one example (0.96 s) is padded with silence to one example, which the
    window's later seconds then repeat.
    """

    def __init__(
        self,
        vggish: str | os.PathLike | None = None,
        vggish_pca: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self._files = (vggish, vggish_pca)
        self.cache = EmbeddingCache(weights_identity(vggish, vggish_pca), feature_mode(vggish_pca), cache_dir)
        self._model: torch.nn.Module | None = None

    def _network(self) -> torch.nn.Module:
        if self._model is None:
            self._model = load_vggish(*self._files)[0]
        return self._model

    def embed(self, samples: np.ndarray | None, rate: int, num_frames: int) -> np.ndarray:
        """float32 ``[num_frames, 128]``: second t of the window hears example t (the last repeats)."""
        if samples is None:
            samples, rate = np.zeros(num_frames * SAMPLE_RATE), SAMPLE_RATE
        sha = audio_sha(samples, rate)
        embedding = self.cache.get(sha)
        if embedding is None:
            embedding = embed_examples(_examples(samples, rate), self._network())
            self.cache.put(sha, embedding)
        return align_to_frames(embedding, num_frames)


def _examples(samples: np.ndarray, rate: int) -> torch.Tensor:
    examples = waveform_to_examples(samples, rate)
    if len(examples) == 0:
        padded = np.zeros(math.ceil(EXAMPLE_SAMPLES * rate / SAMPLE_RATE) + 1)
        padded[: samples.size] = samples
        examples = waveform_to_examples(padded, rate)
    return examples


# ------------------------------------------------------------------------------------- windows
@dataclass
class Window:
    """``frames`` uint8 ``[n, S, S, 3]`` of seconds ``start .. start + n - 1`` and the window's audio
    (None: the video has no audio track, or it ended before this window)."""

    index: int
    start: int
    frames: np.ndarray
    samples: np.ndarray | None
    rate: int


def iter_windows(path: str | os.PathLike, size: int, seconds: int = WINDOW_SECONDS) -> Iterator[Window]:
    """The clip as consecutive windows of up to ``seconds`` seconds; InputError for a clip without a
    single second (zero-length)."""
    audio = iter_audio_windows(path, seconds)
    frames: list[np.ndarray] = []
    index = 0
    for frame in iter_second_frames(path, size):
        frames.append(frame)
        if len(frames) == seconds:
            yield _window(index, index * seconds, frames, next(audio, None))
            frames, index = [], index + 1
    if frames:
        yield _window(index, index * seconds, frames, next(audio, None))
    elif index == 0:
        raise InputError(f"{path}: zero-length clip (no frame at 1 fps: shorter than half a second)")


def _window(index: int, start: int, frames: list[np.ndarray], audio: tuple[np.ndarray, int] | None) -> Window:
    samples, rate = audio if audio is not None else (None, SAMPLE_RATE)
    return Window(index, start, np.stack(frames), samples, rate)


# ------------------------------------------------------------------------------------- writing
# Audio codecs an MP4 carries as they are: ``sound_from`` copies their packets, re-encodes others to AAC.
COPIED_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac"})
AAC_BITRATE = 192_000  # the re-encoded sound: transparent for speech and music at 44.1-48 kHz stereo


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray | av.VideoFrame],
    rate: int | Fraction,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    audio: tuple[np.ndarray, int] | None = None,
    audio_codec: str = "pcm_s16le",
    sound_from: str | os.PathLike | None = None,
) -> None:
    """Encode RGB uint8 frames ``[H, W, 3]`` or PyAV frames (all one size; a frame already in ``pix_fmt``
    goes to the encoder unconverted) at a constant ``rate``, with optional int16
    mono audio ``(samples, sample rate)``, or the first audio stream of the file ``sound_from`` (its
    packets copied when the codec is one of :data:`COPIED_AUDIO`, else re-encoded to AAC); the container
    follows the file's suffix."""
    av = _av()
    with contextlib.ExitStack() as stack:
        container = stack.enter_context(av.open(str(path), "w"))
        source = stack.enter_context(av.open(str(sound_from))) if sound_from is not None else None
        heard = source.streams.audio[0] if source is not None and source.streams.audio else None
        stream = None
        sound = None
        if audio is not None:
            sound = container.add_stream(audio_codec, rate=audio[1], layout="mono")
        elif heard is not None:
            sound = _sound_stream(container, heard)
        for i, item in enumerate(frames):
            if isinstance(item, np.ndarray):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(item), format="rgb24")
            else:
                frame = item
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(rate), options=options or {})
                stream.height, stream.width = frame.height, frame.width
                stream.pix_fmt = pix_fmt
            frame.pts = i
            container.mux(stream.encode(frame))
        if stream is not None:
            container.mux(stream.encode(None))
        if sound is not None and audio is not None:
            _write_audio(sound, container, audio[0])
        elif sound is not None and heard is not None:
            _copy_sound(source, heard, container, sound)


def _sound_stream(container: Any, heard: Any) -> Any:
    """The output stream for the input stream ``heard``: its own codec (copied), or AAC."""
    if heard.codec_context.name in COPIED_AUDIO:
        return container.add_stream_from_template(heard)
    sound = container.add_stream("aac", rate=heard.codec_context.sample_rate)
    sound.bit_rate = AAC_BITRATE
    sound.format = "fltp"  # what FFmpeg's AAC encoder takes; frames are converted to it
    sound.layout = "mono" if heard.codec_context.channels == 1 else "stereo"  # more: down-mixed
    return sound


def _copy_sound(source: Any, heard: Any, container: Any, sound: Any) -> None:
    """The source's audio into ``sound``: its packets as they are, or decoded and encoded."""
    copy = heard.codec_context.name in COPIED_AUDIO
    for packet in source.demux(heard):
        if packet.dts is None:  # the demuxer's end-of-stream marker
            continue
        if copy:
            packet.stream = sound
            container.mux(packet)
            continue
        for frame in packet.decode():
            frame.pts = None  # the encoder numbers its own samples from 0
            container.mux(sound.encode(frame))
    if not copy:
        container.mux(sound.encode(None))


def _write_audio(
    stream: av.audio.stream.AudioStream, container: av.container.OutputContainer, samples: np.ndarray
) -> None:
    av = _av()
    frame = av.AudioFrame.from_ndarray(np.asarray(samples, dtype=np.int16)[None, :], format="s16", layout="mono")
    frame.sample_rate, frame.pts = stream.rate, 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
