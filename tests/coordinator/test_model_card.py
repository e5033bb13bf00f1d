"""The model card of a published version: volunteers' names in its contributors table are shown, never rendered.

The card is the run's page on the Hub, and names come from volunteers (a ledger may hold any written before the
records' schema checked them): a Markdown link or image there would be live, HTML would be HTML, a | would break
the table.
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
import torch
import transformers
from markdown_it import MarkdownIt

from coordinator.checkpoint import VersionInfo, save_version
from swarm.recipe import Recipe
from swarm.tokenizer import ByteTokenizer

HOSTILE = [
    ("[Claim your prize](https://evil.example)", "![](https://tracker.example/p.gif)"),
    ("<script>alert(1)</script>", '=HYPERLINK("http://evil","x")\x1b[31mRED\x1b[0m'),
    ("a | b", "`code` *bold* _it_ ~~gone~~ $x^2$"),
    ("<https://auto.example>", "back\\slash & &amp; <b>bold</b>"),
    ("ada", ""),
]


class _Cells(HTMLParser):
    """The text of each table body row's cells, and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.tags: set[str] = set()
        self._in_body = self._in_cell = False

    def handle_starttag(self, tag: str, attrs) -> None:  # type: ignore[no-untyped-def]
        self.tags.add(tag)
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._in_cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.rows[-1][-1] += data


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> str:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=259, n_positions=32)
    recipe = Recipe(run={"id": "t"})
    info = VersionInfo(epoch=3, samples_seen=192, val_loss=4.5, recipe_fingerprint=recipe.fingerprint,
                       data_digest="0" * 64, data_description="test bytes",
                       top_contributors=[dict(name=name, team=team, peer_id=f"Qm{index}", granted_samples=100 - index)
                                         for index, (name, team) in enumerate(HOSTILE)])
    version = save_version(tmp_path_factory.mktemp("checkpoints"), transformers.GPT2LMHeadModel(config),
                           ByteTokenizer().to_transformers(), recipe, info)
    return (version / "README.md").read_text()


def test_hostile_names_in_the_model_card_render_as_the_text_they_are(card: str):
    table = card.split("## Top contributors", 1)[1].split("\n\n")[1]
    html = MarkdownIt("commonmark").enable("table").enable("strikethrough").render(table)
    cells = _Cells()
    cells.feed(html)
    assert cells.tags == {"table", "thead", "tbody", "tr", "th", "td"}, html  # no link, image, script, code, em
    expected = [[name.replace("\x1b", "\\x1b"), team.replace("\x1b", "\\x1b") or "-", str(100 - index)]
                for index, (name, team) in enumerate(HOSTILE)]
    assert cells.rows == expected
    assert "\x1b" not in card


def test_ordinary_names_stay_readable_in_the_card_source(card: str):
    assert "| ada | - | 96 |" in card
