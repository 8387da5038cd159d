"""cifar_hpo.storage.names.safe_filename: every study name gives one visible, distinct file name without separators."""

from __future__ import annotations

from cifar_hpo.storage.names import MAX_SLUG, safe_filename

NAMES = ["..", ".", "", "a/b", "a\\b", "/abs", ".hidden", "日本", "中文", "été", "a b", "a_b", "a-b", "x" * 300,
         "bad\udcffbytes", "CON", "normal"]


def test_safe_filename_is_one_plain_component_and_distinct() -> None:
    results = [safe_filename(name) for name in NAMES]
    assert len(set(results)) == len(NAMES)
    for name, result in zip(NAMES, results):
        assert result.isascii() and not result.startswith((".", "-")) and result not in (".", "..")
        assert "/" not in result and "\\" not in result and len(result) <= MAX_SLUG + 9, (name, result)
    assert safe_filename("normal").startswith("normal-") and safe_filename("normal") == results[-1]  # stable
