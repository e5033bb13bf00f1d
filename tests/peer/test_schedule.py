"""`--hours`: when a volunteer may train, computed from explicit instants and time zones (no clock, no sleeping)."""

from __future__ import annotations

import doctest
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

import peer.schedule
from peer.schedule import Window, departure, duration, parse_hours, waiting
from swarm.errors import UsageError

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")  # clocks 02:00 -> 03:00 on 2026-03-29, 03:00 -> 02:00 on 2026-10-25
NEW_YORK = ZoneInfo("America/New_York")  # clocks 02:00 -> 03:00 on 2026-03-08, 02:00 -> 01:00 on 2026-11-01
HOUR = 3600.0


def at(tz, month: int, day: int, hour: int, minute: int = 0, fold: int = 0) -> float:
    return datetime(2026, month, day, hour, minute, tzinfo=tz, fold=fold).timestamp()


def test_the_module_s_example_runs():
    assert doctest.testmod(peer.schedule).failed == 0


@pytest.mark.parametrize("text, windows, shown", [
    ("22:00-07:00", [(22 * 60, 7 * 60)], "22:00-07:00"),
    ("12:00-13:00,22:00-07:00", [(12 * 60, 13 * 60), (22 * 60, 7 * 60)], "12:00-13:00,22:00-07:00"),
    (" 9:30 - 17:00 , 18:00-24:00", [(9 * 60 + 30, 17 * 60), (18 * 60, 0)], "09:30-17:00,18:00-00:00"),
    ("00:00-06:00", [(0, 6 * 60)], "00:00-06:00"),
])
def test_windows_are_read_as_the_owner_writes_them(text, windows, shown):
    hours = parse_hours(text)
    assert [(w.start_min, w.end_min) for w in hours.windows] == windows
    assert str(hours) == shown


@pytest.mark.parametrize("text, problem", [
    ("22:00", "'22:00' is not a window from one time to another"),
    ("22:00-07:00-09:00", "'22:00-07:00-09:00' is not a window from one time to another"),
    ("25:00-07:00", "'25:00' is not a time of day as HH:MM"),
    ("22:60-07:00", "'22:60' is not a time of day as HH:MM"),
    ("10pm-7am", "'10pm' is not a time of day as HH:MM"),
    ("2200-0700", "'2200' is not a time of day as HH:MM"),
    ("24:30-07:00", "'24:30' is not a time of day as HH:MM"),
    ("22:00-07:00,", "an empty window"),
    ("", "no window"),
    ("08:00-08:00", "'08:00-08:00' ends where it starts (leave --hours out to train at any time)"),
])
def test_a_mistyped_window_is_named_with_the_form_to_use(text, problem):
    with pytest.raises(UsageError) as raised:
        parse_hours(text)
    assert str(raised.value) == (f"--hours {text} (or SWARM_HOURS): {problem}; give windows of local time as "
                                 "HH:MM-HH:MM, 24-hour, e.g. --hours 22:00-07:00, or --hours 12:00-13:00,22:00-07:00 "
                                 "for several")
    assert raised.value.exit_code == 2


def test_windows_that_cover_the_whole_day_are_refused():
    with pytest.raises(UsageError, match=r"^--hours 00:00-12:00,11:00-00:00 \(or SWARM_HOURS\): these windows cover "
                                         "the whole day; leave --hours out to train at any time$"):
        parse_hours("00:00-12:00,11:00-00:00")


def test_a_window_across_midnight_is_open_from_its_start_to_its_end_the_next_morning():
    hours = parse_hours("22:00-07:00")
    for month, day, hour, minute in ((12, 6, 22, 0), (12, 6, 23, 59), (12, 7, 0, 0), (12, 7, 6, 59)):
        stretch = hours.stretch_at(at(UTC, month, day, hour, minute), UTC)
        assert stretch is not None, (day, hour, minute)
        assert stretch.end_s == at(UTC, 12, 7, 7) and stretch.start_s == at(UTC, 12, 6, 22)
    for hour, minute in ((7, 0), (12, 0), (21, 59)):
        assert hours.stretch_at(at(UTC, 12, 7, hour, minute), UTC) is None
        assert hours.next_start_s(at(UTC, 12, 7, hour, minute), UTC) == at(UTC, 12, 7, 22)


def test_the_next_window_is_the_nearest_of_several():
    hours = parse_hours("22:00-07:00,12:00-13:00")
    assert hours.next_start_s(at(UTC, 12, 7, 8), UTC) == at(UTC, 12, 7, 12)
    assert hours.next_start_s(at(UTC, 12, 7, 13), UTC) == at(UTC, 12, 7, 22)
    assert hours.next_start_s(at(UTC, 12, 7, 23), UTC) == at(UTC, 12, 8, 12)  # the same night's is open already
    assert hours.stretch_at(at(UTC, 12, 7, 12, 30), UTC).label == "window 12:00-13:00"


def test_windows_that_meet_or_overlap_make_one_stretch():
    hours = parse_hours("00:00-07:00,22:00-00:00,06:00-08:00")
    stretch = hours.stretch_at(at(UTC, 12, 6, 23), UTC)
    assert (stretch.start_s, stretch.end_s) == (at(UTC, 12, 6, 22), at(UTC, 12, 7, 8))
    assert stretch.label == "windows 22:00-00:00,00:00-07:00,06:00-08:00"


def test_a_night_window_lasts_what_the_wall_clock_says_across_a_daylight_saving_change():
    hours = parse_hours("22:00-07:00")
    spring = hours.stretch_at(at(BERLIN, 3, 28, 23), BERLIN)
    assert spring.end_s - spring.start_s == 8 * HOUR  # the clocks skip 02:00-03:00
    assert spring.end_s == at(BERLIN, 3, 29, 7)
    autumn = hours.stretch_at(at(BERLIN, 10, 24, 23), BERLIN)
    assert autumn.end_s - autumn.start_s == 10 * HOUR  # 02:00-03:00 twice
    # the next start, and the wait for it, in real seconds
    assert hours.next_start_s(at(BERLIN, 3, 29, 7), BERLIN) - at(BERLIN, 3, 29, 7) == 15 * HOUR
    assert waiting(hours, None, 0.0, at(BERLIN, 10, 24, 21), BERLIN).until_s == at(BERLIN, 10, 24, 22)


def test_a_time_the_clocks_skip_counts_from_the_jump_and_one_they_show_twice_from_its_first_showing():
    skipped = parse_hours("02:30-04:00").stretch_at(at(BERLIN, 3, 29, 3, 30), BERLIN)
    assert skipped.start_s == datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN).timestamp()  # 01:00 UTC, the jump
    assert skipped.end_s - skipped.start_s == HOUR
    twice = parse_hours("01:30-03:00").stretch_at(at(NEW_YORK, 11, 1, 2), NEW_YORK)
    assert twice.start_s == at(NEW_YORK, 11, 1, 1, 30, fold=0)  # 05:30 UTC, not 06:30 UTC
    assert twice.end_s - twice.start_s == 2.5 * HOUR
    # a window wholly inside the skipped hour does not open that night, and opens the next
    gone = parse_hours("02:10-02:40")
    assert gone.stretch_at(at(BERLIN, 3, 29, 3, 20), BERLIN) is None
    assert gone.next_start_s(at(BERLIN, 3, 29, 1), BERLIN) == at(BERLIN, 3, 30, 2, 10)


def test_the_owner_hears_when_training_starts_and_until_when_it_lasts():
    hours = parse_hours("22:00-07:00")
    outside = waiting(hours, None, 0.0, at(UTC, 12, 6, 18, 48), UTC)
    assert outside.message == "Outside --hours 22:00-07:00: training starts at 22:00 (in 3 h 12 min)"
    assert outside.until_s == at(UTC, 12, 6, 22)
    inside = waiting(hours, None, 0.0, at(UTC, 12, 6, 22, 57), UTC)
    assert inside.message == "Inside --hours 22:00-07:00: training until 07:00 (for 8 h 3 min), and again from 22:00"
    assert inside.until_s == at(UTC, 12, 6, 22, 57)
    assert waiting(None, 40.0, 0.0, at(UTC, 12, 6, 12), UTC) is None


def test_a_max_runtime_that_ends_before_the_next_window_leaves_without_training():
    hours, joined = parse_hours("22:00-07:00"), at(UTC, 12, 6, 18)
    wait = waiting(hours, 3600.0, joined, joined, UTC)
    assert wait.until_s is None
    assert wait.message == ("Outside --hours 22:00-07:00: the next window opens at 22:00 (in 4 h), after this "
                            "volunteer's --max-runtime (3600 s) ends: nothing to train, leaving")
    assert waiting(hours, 5 * HOUR, joined, joined, UTC).until_s == at(UTC, 12, 6, 22)
    inside = waiting(hours, 5 * HOUR, joined, at(UTC, 12, 6, 22), UTC)
    assert inside.message == "Inside --hours 22:00-07:00: training until 23:00 (for 1 h), when --max-runtime ends"


def test_the_volunteer_leaves_at_the_window_s_end_and_says_when_it_is_back():
    hours = parse_hours("12:00-13:00,22:00-07:00")
    leave = departure(hours, None, 0.0, at(UTC, 12, 7, 3), UTC)
    assert leave.at_s == at(UTC, 12, 7, 7) and leave.back_at_s == at(UTC, 12, 7, 12)
    assert leave.reason == "the --hours window 22:00-07:00 ended at 07:00; back at 12:00"


def test_a_volunteer_started_outside_its_hours_leaves_at_once():
    # `swarm join` waits for the window first; a Volunteer run directly outside it trains nothing
    leave = departure(parse_hours("22:00-07:00"), None, 0.0, at(UTC, 12, 7, 9), UTC)
    assert (leave.at_s, leave.back_at_s) == (at(UTC, 12, 7, 9), at(UTC, 12, 7, 22))
    assert leave.reason == "this machine is outside --hours 22:00-07:00; back at 22:00"


def test_max_runtime_counts_from_the_join_and_wins_over_the_window():
    hours, joined = parse_hours("22:00-07:00"), at(UTC, 12, 6, 21)  # joined outside, waited an hour
    assert departure(None, 40.0, joined, joined + 10, UTC) == peer.schedule.Departure(
        joined + 40, "this volunteer's --max-runtime (40 s) is used up")
    ends_first = departure(hours, 3 * HOUR, joined, at(UTC, 12, 6, 22), UTC)
    assert ends_first.at_s == at(UTC, 12, 7, 0) and ends_first.back_at_s is None
    ends_between = departure(hours, 12 * HOUR, joined, at(UTC, 12, 6, 22), UTC)  # at 09:00, the next window at 22:00
    assert ends_between.at_s == at(UTC, 12, 7, 7) and ends_between.back_at_s is None
    assert ends_between.reason == ("the --hours window 22:00-07:00 ended at 07:00, and --max-runtime (43200 s) ends "
                                   "before the next one opens")
    lasts = departure(hours, 48 * HOUR, joined, at(UTC, 12, 6, 22), UTC)
    assert lasts.back_at_s == at(UTC, 12, 7, 22)
    assert departure(hours, float("inf"), joined, at(UTC, 12, 6, 22), UTC).back_at_s == at(UTC, 12, 7, 22)


@pytest.mark.parametrize("seconds, words", [
    (0.2, "1 s"), (40, "40 s"), (59.6, "1 min"), (45 * 60, "45 min"), (3 * HOUR, "3 h"),
    (3 * HOUR + 12 * 60 - 20, "3 h 12 min"), (23 * HOUR + 59 * 60 + 50, "24 h"),
])
def test_waits_are_told_in_hours_and_minutes(seconds, words):
    assert duration(seconds) == words


def test_a_window_is_shown_as_written():
    assert str(Window(22 * 60, 7 * 60)) == "22:00-07:00"
