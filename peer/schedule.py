"""When this volunteer may train: the owner's `--hours` windows of local time, and `--max-runtime`.

SETI@home-style limits: `swarm join --hours 22:00-07:00` trains only at night. Outside a window the process sleeps
(nothing imported but the CLI, no hivemind process); at a window's end the volunteer leaves as it does at the end of
its --max-runtime, its epoch in progress finished, then waits for the next window and joins again.

Pure, except `wait_for_training_hours` at the end: times are POSIX instants (`time.time()`), and local wall-clock times
become instants through the time zone's own rules (`tz`, default the machine's local time), so a wait or a window that
spans a daylight-saving change lasts what the clock on the wall says. A time the clock skips as it springs forward
(02:30 in most of Europe, one night in March) counts from the jump; a time it shows twice as it falls back, from its
first showing.

>>> hours = parse_hours("12:00-13:00,22:00-07:00")
>>> str(hours)
'12:00-13:00,22:00-07:00'
>>> from datetime import datetime, timezone
>>> now = datetime(2026, 12, 6, 20, 48, tzinfo=timezone.utc).timestamp()
>>> waiting(hours, None, now, now, tz=timezone.utc).message
'Outside --hours 12:00-13:00,22:00-07:00: training starts at 22:00 (in 1 h 12 min)'
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from datetime import time as clock_time

from swarm.errors import UsageError

logger = logging.getLogger("swarm.peer")

MINUTES_PER_DAY = 24 * 60
EXAMPLE = "e.g. --hours 22:00-07:00, or --hours 12:00-13:00,22:00-07:00 for several"
NAP_S = 60.0  # the longest single sleep while waiting: a machine suspended meanwhile wakes to the real clock
_TIME = re.compile(r"(\d{1,2}):(\d{2})")


@dataclass(frozen=True)
class Window:
    """A daily window of local time; it crosses midnight when it ends at or before its start (22:00-07:00)."""

    start_min: int  # minutes after midnight
    end_min: int

    def __str__(self) -> str:
        return f"{_hhmm(self.start_min)}-{_hhmm(self.end_min)}"


@dataclass(frozen=True)
class Stretch:
    """Windows that follow one another without a gap, on given days: from `start_s` to `end_s` (instants)."""

    start_s: float
    end_s: float
    windows: tuple[Window, ...]

    @property
    def label(self) -> str:
        return ("window " if len(self.windows) == 1 else "windows ") + ",".join(map(str, self.windows))


@dataclass(frozen=True)
class TrainingHours:
    """The windows of `--hours`, every day."""

    windows: tuple[Window, ...]

    def __str__(self) -> str:
        return ",".join(map(str, self.windows))

    def stretch_at(self, now_s: float, tz: tzinfo | None = None) -> Stretch | None:
        """The open stretch of windows that `now_s` is in, or None outside them all."""
        return next((s for s in self._stretches(now_s, tz) if s.start_s <= now_s < s.end_s), None)

    def next_start_s(self, after_s: float, tz: tzinfo | None = None) -> float:
        """When a window next opens after `after_s` (within a day: every window comes back daily)."""
        return next(s.start_s for s in self._stretches(after_s, tz) if s.start_s > after_s)

    def _stretches(self, around_s: float, tz: tzinfo | None) -> list[Stretch]:
        """The windows from two days before `around_s` to three after, as instants, those that touch merged: a
        stretch lasts less than a day (the windows never cover all of it), so the one around `around_s` and the
        next one are among them."""
        today = datetime.fromtimestamp(around_s, tz).date()
        spans = []
        for day in (today + timedelta(days=offset) for offset in range(-2, 4)):
            for window in self.windows:
                end_day = day + timedelta(days=1) if window.end_min <= window.start_min else day
                start_s, end_s = _instant(day, window.start_min, tz), _instant(end_day, window.end_min, tz)
                if end_s > start_s:  # else it lies in the hour the clocks skip
                    spans.append((start_s, end_s, window))
        stretches: list[Stretch] = []
        for start_s, end_s, window in sorted(spans, key=lambda span: span[:2]):
            if stretches and start_s <= stretches[-1].end_s:
                last = stretches[-1]
                windows = last.windows + (window,) * (window not in last.windows)
                stretches[-1] = Stretch(last.start_s, max(last.end_s, end_s), windows)
            else:
                stretches.append(Stretch(start_s, end_s, (window,)))
        return stretches


def parse_hours(text: str) -> TrainingHours:
    """`--hours` as the owner wrote it: comma-separated HH:MM-HH:MM windows of 24-hour local time (24:00 is
    midnight). A mistake raises UsageError naming the flag, the bad part and the form."""
    def refuse(problem: str) -> UsageError:
        return UsageError(f"--hours {text} (or SWARM_HOURS): {problem}; give windows of local time as "
                          f"HH:MM-HH:MM, 24-hour, {EXAMPLE}")

    windows = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise refuse("an empty window" if text.strip() else "no window")
        ends = [end.strip() for end in part.split("-")]
        if len(ends) != 2:
            raise refuse(f"{part!r} is not a window from one time to another")
        start_min, end_min = (_minutes(end, refuse) for end in ends)
        if start_min == end_min:
            raise refuse(f"{part!r} ends where it starts (leave --hours out to train at any time)")
        windows.append(Window(start_min, end_min))
    covered = set()
    for window in windows:
        length = (window.end_min - window.start_min) % MINUTES_PER_DAY
        covered.update((window.start_min + minute) % MINUTES_PER_DAY for minute in range(length))
    if len(covered) == MINUTES_PER_DAY:
        raise UsageError(f"--hours {text} (or SWARM_HOURS): these windows cover the whole day; leave --hours out to "
                         "train at any time")
    return TrainingHours(tuple(windows))


def _minutes(text: str, refuse) -> int:
    match = _TIME.fullmatch(text)
    hours, minutes = (int(match.group(1)), int(match.group(2))) if match else (-1, -1)
    if not (0 <= hours < 24 and 0 <= minutes < 60) and (hours, minutes) != (24, 0):
        raise refuse(f"{text!r} is not a time of day as HH:MM")
    return (hours * 60 + minutes) % MINUTES_PER_DAY


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _instant(day: date, minute: int, tz: tzinfo | None) -> float:
    """The instant when the wall clock of `tz` (None: this machine's) shows `minute` on `day`."""
    wall = datetime.combine(day, clock_time(minute // 60, minute % 60), tzinfo=tz)
    first, second = wall.timestamp(), wall.replace(fold=1).timestamp()
    if first <= second:  # an ordinary time, or one shown twice as the clocks go back: its first showing
        return first
    # skipped as the clocks spring forward: fold=0 read it with the offset from before the jump, which lands after
    # the jump by as long as the time is into the gap; the jump itself is the first second showing a later time
    naive = wall.replace(tzinfo=None)
    low, high = int(second), int(math.ceil(first))
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).replace(tzinfo=None, fold=0) >= naive:
            high = middle
        else:
            low = middle
    return float(high)


def clock(instant_s: float, tz: tzinfo | None = None) -> str:
    """HH:MM of the local wall clock at `instant_s`."""
    return datetime.fromtimestamp(instant_s, tz).strftime("%H:%M")


def duration(seconds: float) -> str:
    """"3 h 12 min", "45 min", "40 s": how long a wait is, in words a volunteer reads at a glance."""
    if seconds < 59.5:
        return f"{max(0, math.ceil(seconds))} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return " ".join(part for part in (f"{hours} h" if hours else "", f"{minutes} min" if minutes else "") if part)


@dataclass(frozen=True)
class Departure:
    """When a volunteer leaves by its owner's limits, why, and when it trains again (None: the process ends)."""

    at_s: float
    reason: str
    back_at_s: float | None = None


def departure(hours: TrainingHours | None, max_runtime_s: float | None, joined_at_s: float, now_s: float,
              tz: tzinfo | None = None) -> Departure | None:
    """The first of the owner's limits that a volunteer training from `now_s` reaches: the end of the --hours
    window it is in (it trains again at the next one, unless --max-runtime has ended by then) or the end of its
    --max-runtime, counted from `joined_at_s` (when `swarm join` started, waits between windows included)."""
    leave = None
    if max_runtime_s is not None:
        leave = Departure(joined_at_s + max_runtime_s,
                          f"this volunteer's --max-runtime ({max_runtime_s:.0f} s) is used up")
    if hours is None:
        return leave
    stretch = hours.stretch_at(now_s, tz)
    end_s = stretch.end_s if stretch is not None else now_s
    if leave is not None and leave.at_s <= end_s:
        return leave
    back_at_s = hours.next_start_s(end_s, tz)
    ended = (f"the --hours {stretch.label} ended at {clock(end_s, tz)}" if stretch is not None
             else f"this machine is outside --hours {hours}")
    if leave is not None and leave.at_s <= back_at_s:
        return Departure(end_s, f"{ended}, and --max-runtime ({max_runtime_s:.0f} s) ends before the next one opens")
    return Departure(end_s, f"{ended}; back at {clock(back_at_s, tz)}", back_at_s)


@dataclass(frozen=True)
class Wait:
    """What to tell the owner of a volunteer with --hours, and when it starts training (None: never, the process
    ends; `now_s` or before: at once)."""

    message: str
    until_s: float | None


def waiting(hours: TrainingHours | None, max_runtime_s: float | None, joined_at_s: float, now_s: float,
            tz: tzinfo | None = None) -> Wait | None:
    """None without --hours."""
    if hours is None:
        return None
    stretch = hours.stretch_at(now_s, tz)
    if stretch is not None:
        leave = departure(hours, max_runtime_s, joined_at_s, now_s, tz)
        then = (f", and again from {clock(leave.back_at_s, tz)}" if leave.back_at_s is not None
                else ", when --max-runtime ends" if leave.at_s < stretch.end_s else "")
        return Wait(f"Inside --hours {hours}: training until {clock(leave.at_s, tz)} (for "
                    f"{duration(leave.at_s - now_s)}){then}", now_s)
    start_s = hours.next_start_s(now_s, tz)
    starts = f"{clock(start_s, tz)} (in {duration(start_s - now_s)})"
    if max_runtime_s is not None and joined_at_s + max_runtime_s <= start_s:
        return Wait(f"Outside --hours {hours}: the next window opens at {starts}, after this volunteer's "
                    f"--max-runtime ({max_runtime_s:.0f} s) ends: nothing to train, leaving", None)
    return Wait(f"Outside --hours {hours}: training starts at {starts}", start_s)


def wait_for_training_hours(hours: TrainingHours | None, max_runtime_s: float | None, joined_at_s: float) -> bool:
    """Sleep until a window opens, saying when, and until when it lasts (False: it opens only after --max-runtime
    ends). Cheap: the caller imports neither torch nor hivemind before this returns; Ctrl-C raises KeyboardInterrupt
    at once."""
    while (wait := waiting(hours, max_runtime_s, joined_at_s, time.time())) is not None:
        logger.info(wait.message)
        if wait.until_s is None:
            return False
        if wait.until_s <= time.time():
            return True
        while (left_s := wait.until_s - time.time()) > 0:
            time.sleep(min(left_s, NAP_S))
    return True
