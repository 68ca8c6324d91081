"""Rewrite the option table of docs/guides/compress.md from RecipeConfig (run after changing a field)."""

from pathlib import Path

from grouppruner.recipe.config import config_reference

BEGIN, END = "<!-- options: begin -->", "<!-- options: end -->"

page = Path(__file__).parent / "guides" / "compress.md"
text = page.read_text(encoding="utf-8")
head, rest = text.split(BEGIN, 1)
_, tail = rest.split(END, 1)
page.write_text(f"{head}{BEGIN}\n{config_reference()}\n{END}{tail}", encoding="utf-8")
