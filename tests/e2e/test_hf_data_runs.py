"""End-to-end runs for hf data: the unit tests are in tests/unit/test_hf_data.py."""

from __future__ import annotations


from conftest import FAST, run_in_process, write_csv


def test_a_run_on_data_hf_trains_and_tests(tmp_path):
    rows = [
        (f"{w} sentence number {i} about {c}", c)
        for c in ("aa", "bb", "cc", "dd", "ee", "ff", "gg")
        for i, w in enumerate(("one", "two", "three", "four", "five", "six"))
    ]
    path = write_csv(tmp_path / "data.csv", rows)
    args = [
        *FAST,
        "data=hf",
        "data.path=csv",
        f"data.data_files={path}",
        "data.text_column=sentence",
        "data.label_column=intent",
        "data.classes={train: [aa, bb, cc], val: [dd, ee], test: [ff, gg]}",
        "sampler.n_way=2",
        "sampler.k_shot=1",
        "sampler.n_query=2",
        "eval.val.n_way=2",
        "eval.test.n_way=2",
        "eval.val.shots=[1]",
        "eval.test.shots=[1]",
        "eval.val.n_query=2",
        "eval.test.n_query=2",
    ]
    results = run_in_process(args, tmp_path / "run")
    assert results["data"] == "data" and results["steps"] == 6
    assert 0 <= results["results"]["test/2way_1shot"]["acc"] <= 100
