"""The drop benchmark's pure helpers: Airflow's times, a drop's phases, the final table."""

from __future__ import annotations

from benchmarks.bench_drop import Drop, table, unix_time


def test_airflow_times_are_utc_with_or_without_their_offset():
    assert unix_time("2026-01-01 00:00:10") == unix_time("2026-01-01T00:00:10+00:00") == 1767225610.0
    assert unix_time(None) is None


def test_a_drops_phases_run_from_its_last_upload_to_its_last_document_searchable():
    queued = unix_time("2026-01-01 00:00:13")
    jobs = [{"start_time": (queued + 4) * 1000, "metadata": {"run_id": "r1"}},
            {"start_time": (queued + 1) * 1000, "metadata": {"run_id": "other"}}]
    drop = Drop(started=queued - 4, uploaded={"s3://b/a.pdf": queued - 3, "s3://b/b.pdf": queued - 2},
                searchable={"s3://b/a.pdf": queued + 9, "s3://b/b.pdf": queued + 10},
                runs=[{"run_id": "r1", "queued_at": "2026-01-01 00:00:13"}], jobs=jobs)
    assert drop.phases() == {"upload -> run queued": 2.0, "run queued -> first Ray job": 4.0,
                             "first Ray job -> searchable": 6.0, "upload -> searchable": 12.0}
    assert drop.to_searchable("s3://b/a.pdf") == 12.0


def test_a_drop_not_all_searchable_has_no_time_to_searchable():
    drop = Drop(started=0.0, uploaded={"s3://b/a.pdf": 1.0, "s3://b/b.pdf": 1.0}, searchable={"s3://b/a.pdf": 5.0},
                runs=[])
    assert not drop.all_searchable and drop.to_searchable("s3://b/b.pdf") is None
    assert set(drop.phases().values()) == {None}


def test_the_table_shows_the_ratio_only_where_both_were_measured():
    lines = table([("drop -> searchable", 6.0, 24.0), ("model loads", 0, 5), ("runs", 2, None)], with_cold=True)
    rows = {line.split("  ")[0]: line.split() for line in lines.splitlines()[2:]}
    assert rows["drop -> searchable"][-3:] == ["6.0", "24.0", "0.25"]
    assert rows["model loads"][-3:] == ["0", "5", "0.00"]
    assert rows["runs"][-3:] == ["2", "-", "-"]
    assert "cold" not in table([("runs", 2, None)], with_cold=False)
