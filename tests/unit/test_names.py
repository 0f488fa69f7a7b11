"""Domain names have one spelling: IDNA 2008 (UTS #46, non-transitional), lower case, no dot."""

from __future__ import annotations

import pytest

from mxwatch.names import BadName, normalise_name, normalise_pattern


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        pytest.param("Contoso.COM.", "contoso.com", id="case-and-trailing-dot"),
        # IDNA 2003 (Python's "idna" codec) maps these to other domains.
        pytest.param("straße.de", "xn--strae-oqa.de", id="sharp-s-is-not-ss"),
        pytest.param("ς.gr", "xn--3xa.gr", id="final-sigma-is-kept"),
        pytest.param("Bücher.example", "xn--bcher-kva.example", id="unicode"),
        pytest.param("XN--BCHER-KVA.example", "xn--bcher-kva.example", id="a-label-upper"),
        pytest.param("\uff41\uff42\uff43.com", "abc.com", id="fullwidth-mapped-by-uts46"),
    ],
)
def test_one_spelling(written: str, normalised: str) -> None:
    assert normalise_name(written) == normalised


def test_sharp_s_and_ss_are_different_domains() -> None:
    assert normalise_name("straße.de") != normalise_name("strasse.de")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a\u200db.com", id="zero-width-joiner-rejected-not-dropped"),
        pytest.param("xn--zz.com", id="invalid-a-label"),
        pytest.param("a..b", id="empty-label"),
        pytest.param("-foo-ü.com", id="hyphen-at-start"),
        pytest.param("", id="empty"),
        pytest.param("x" * 250 + ".com", id="too-long"),
        pytest.param("a b.example", id="space"),
        pytest.param("evil\n.example", id="control-character"),
        pytest.param("-a.example", id="ascii-hyphen-at-start"),
        pytest.param("x" * 64 + ".example", id="label-too-long"),
    ],
)
def test_names_idna_2008_rejects(name: str) -> None:
    with pytest.raises(BadName):
        normalise_name(name)


def test_pattern_keeps_its_wildcard_and_normalises_the_rest() -> None:
    assert normalise_pattern("*.Inbound.Straße.example.") == "*.inbound.xn--strae-oqa.example"
    with pytest.raises(BadName):
        normalise_pattern("mx*.example.com")
