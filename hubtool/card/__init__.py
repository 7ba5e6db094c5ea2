"""Model cards for every artifact of a release: templates, YAML header as data, Hub checks."""

from __future__ import annotations

from hubtool.card.check import check_card, check_card_file
from hubtool.card.compose import RenderedCard, card_header, card_warnings, compose_card, render_card
from hubtool.card.metadata import KINDS, parse_overrides, split_release_config

__all__ = ["KINDS", "RenderedCard", "card_header", "card_warnings", "check_card", "compose_card", "check_card_file", "parse_overrides", "render_card", "split_release_config"]
