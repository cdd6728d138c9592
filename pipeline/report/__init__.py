"""The HTML report: deterministic figures (:mod:`.figures`), the jinja2 template
(``template.html``) and its assembly (:mod:`.build`)."""

from __future__ import annotations
