"""Reading Linux IIO ADC voltage channels from sysfs (blocking: run it in a thread).

The IIO ABI: `in_voltageN_raw` is the ADC count; the processed value in millivolts is
`(raw + offset) * scale`, where `scale` and `offset` are per channel (`in_voltageN_scale`) or
shared by all voltage channels (`in_voltage_scale`); a missing offset is 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edged.model import Status


class DeviceGone(Exception):
    """The IIO device directory is not there (driver unloaded, USB ADC unplugged)."""


@dataclass(frozen=True, slots=True)
class Channel:
    """One channel's raw reading, or why there is none."""

    raw: int | None
    scale_mv: float = 0.0
    offset: int = 0
    status: int = Status.GOOD
    problem: tuple[str, str] | None = None  # (counter kind, reason)

    @property
    def mv(self) -> float:
        assert self.raw is not None
        return (self.raw + self.offset) * self.scale_mv


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _number(text: str, what: str, integer: bool) -> float:
    s = text.strip()
    try:
        return int(s) if integer else float(s)
    except ValueError:
        pass
    if integer:  # some drivers print an integral offset as "-512.000000"
        try:
            f = float(s)
        except ValueError:
            f = float("nan")
        if f.is_integer():
            return int(f)
    raise ValueError(f"{what} holds {s[:40]!r}, not a{'n integer' if integer else ' number'}")


def read_channels(device: Path, channels: set[int]) -> dict[int, Channel]:
    """One pass over the files of `channels`; DeviceGone when the device directory is missing."""
    if not device.is_dir():
        raise DeviceGone(f"IIO device {device} does not exist")
    shared: dict[str, str | None] = {}  # in_voltage_scale / in_voltage_offset, read once per pass

    def attr(ch: int, name: str) -> tuple[str | None, str]:
        own = device / f"in_voltage{ch}_{name}"
        text = _read(own)
        if text is not None:
            return text, own.name
        if name not in shared:
            shared[name] = _read(device / f"in_voltage_{name}")
        return shared[name], f"in_voltage_{name}"

    out: dict[int, Channel] = {}
    for ch in sorted(channels):
        raw_file = device / f"in_voltage{ch}_raw"
        try:
            raw_text = _read(raw_file)
            if raw_text is None:
                if not device.is_dir():
                    raise DeviceGone(f"IIO device {device} disappeared")
                out[ch] = Channel(None, status=Status.BAD_CONFIGURATION_ERROR,
                                  problem=("no_channel", f"{raw_file} does not exist"))  # fmt: skip
                continue
            scale_text, scale_name = attr(ch, "scale")
            if scale_text is None:
                reason = f"neither in_voltage{ch}_scale nor in_voltage_scale exists in {device}"
                out[ch] = Channel(None, status=Status.BAD_CONFIGURATION_ERROR, problem=("no_scale", reason))
                continue
            offset_text, offset_name = attr(ch, "offset")
            raw = int(_number(raw_text, raw_file.name, integer=True))
            scale = float(_number(scale_text, scale_name, integer=False))
            offset = int(_number(offset_text, offset_name, integer=True)) if offset_text is not None else 0
        except ValueError as exc:
            out[ch] = Channel(None, status=Status.BAD_DECODING_ERROR, problem=("decode_error", str(exc)))
            continue
        except OSError as exc:  # EIO, EBUSY, ETIMEDOUT from the ADC driver: this read failed
            reason = f"{raw_file}: {exc.strerror or os.strerror(exc.errno or 0)}"
            out[ch] = Channel(None, status=Status.BAD_COMMUNICATION_ERROR, problem=("read_error", reason))
            continue
        out[ch] = Channel(raw, scale, offset)
    return out
