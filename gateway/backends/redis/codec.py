"""Device records as a user's Redis hash holds them (field ``d:<device>``, see ``keys``).

``encode_record`` writes the form apply.lua writes, ``time,+|-,base,ons,offs,platform`` (the
platform last, so nothing in it can break the parse); ``decode_record`` reads it back, as
``RedisStore.records`` does. apply.lua has its own pair of these, which the tests hold to the
same records.

The two forms written before are still read, here and in apply.lua, never written:

- ``time,0|1,off,ons,platform`` (the latest offline and the onlines since it): the form of the
  previous release. A rolling upgrade meets it: every record that release wrote and no apply
  rewrote since.
- ``time,0|1,platform`` (the record of one event): the form before that. Not dead either: the
  previous release, like this one, rewrote only the records an apply changed, so a device
  with no event since still holds it, and a record apply.lua cannot parse would fail every
  apply of its user. ``test_reads_records_of_the_older_form`` holds both.
"""

from __future__ import annotations

from gateway.model import DeviceRecord


def _times(times: tuple[int, ...]) -> str:
    return ";".join(map(str, times))


def encode_record(rec: DeviceRecord) -> str:
    """A device record as apply.lua stores it: ``time,+|-,base,on1;on2;…,off1;off2;…,platform``."""
    base = "" if rec.base is None else str(rec.base)
    flag = "+" if rec.online else "-"
    return f"{rec.time},{flag},{base},{_times(rec.ons)},{_times(rec.offs)},{rec.platform}"


def _parse_times(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(";") if t)


def decode_record(raw: bytes | str) -> DeviceRecord:
    """The record ``encode_record`` made, or one of the older forms (see apply.lua)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    head = text.split(",", 2)
    if head[1] in ("+", "-"):
        time, flag, base, ons, offs, platform = text.split(",", 5)
        return DeviceRecord(
            int(time),
            flag == "+",
            platform,
            _parse_times(ons),
            _parse_times(offs),
            int(base) if base else None,
        )
    parts = text.split(",", 4)
    at, online = int(parts[0]), parts[1] == "1"
    if len(parts) == 3:  # time,online,platform: the record of that one event
        return DeviceRecord(at, online, parts[2], (at,) if online else (), () if online else (at,))
    last_off, old_ons, old_platform = parts[2:]  # time,online,off,ons,platform
    old_offs = (int(last_off),) if last_off else ()
    return DeviceRecord(at, online, old_platform, _parse_times(old_ons), old_offs)
