"""The course as an instructor adopts it: multiple-choice answers spread over the letters, options
of comparable length, and one set of minutes per notebook in the notebooks and the README."""

import json
import re
from collections import Counter
from pathlib import Path

from emfl.assignments import load_solutions

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))


def answers() -> dict:
    out = {}
    for path in sorted((ROOT / "solutions").glob("ex*.py")):
        out.update(load_solutions(path))
    return out


def options(statement: str) -> dict:
    """The options ``(a) ...; (b) ...`` of a multiple-choice statement, each cut at the end of its
    sentence or paragraph."""
    parts = re.split(r"(?:^|\s)\(([a-d])\)\s", statement)
    out = {}
    for letter, body in zip(parts[1::2], parts[2::2]):
        body = re.split(r"\n\s*\n", body)[0]
        body = re.split(r"[.?!]\s+(?=[A-Z])", body)[0]
        body = re.sub(r"\s+", " ", body).strip()
        body = re.sub(r"\s*[;,.]?\s*(or)?$", "", body).strip()
        out[letter] = re.sub(r"^[-*]\s*", "", body)
    return out


def statements() -> dict:
    """{exercise number: its markdown statement}, from every notebook."""
    out = {}
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            text = "".join(cell["source"])
            m = re.search(r"\*\*Exercise ([0-9]+[a-z]*\.[0-9]+) ", text)
            if cell["cell_type"] == "markdown" and m:
                out[m.group(1)] = text[m.start():]
    return out


def test_options_are_read_from_a_statement():
    text = "**Exercise 9.1 (x).** Why? (a) one thing; (b) another,\nlonger thing; or (c) a third. Then run it."
    assert options(text) == {"a": "one thing", "b": "another, longer thing", "c": "a third"}


def test_no_letter_holds_more_than_two_fifths_of_the_right_answers():
    letters = [a for a in answers().values() if isinstance(a, str) and re.fullmatch("[a-d]", a)]
    assert len(letters) >= 10
    letter, count = Counter(letters).most_common(1)[0]
    assert count <= 0.4 * len(letters), f"({letter}) is right in {count} of {len(letters)} questions"


def test_every_multiple_choice_question_has_options_of_comparable_length():
    found = 0
    for number, text in statements().items():
        opts = options(text)
        if len(opts) < 3:
            continue
        found += 1
        lengths = {k: len(v) for k, v in opts.items()}
        assert max(lengths.values()) <= 1.6 * min(lengths.values()), (number, lengths)
        right = answers().get(number)
        if right in lengths:  # the right option is never the longest by far
            others = max(v for k, v in lengths.items() if k != right)
            assert lengths[right] <= 1.3 * others, (number, lengths)
    assert found >= 10


def test_one_set_of_minutes_in_the_notebooks_and_the_readme():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"doing all its exercises: (.*?)\):", readme, flags=re.S)
    assert m, "the README lists each notebook's minutes"
    listed = dict(re.findall(r"(\d\d[a-z]?) (\d+)", " ".join(m.group(1).split())))
    headers = {}
    for path in NOTEBOOKS:
        first = "".join(json.loads(path.read_text())["cells"][0]["source"])
        minutes = re.findall(r"About (\d+) minutes", " ".join(first.split()))
        assert len(minutes) == 1, f"{path.name}: its first cell says once how long it takes"
        headers[path.name.split("_")[0]] = minutes[0]
    assert headers == listed


def test_every_cell_has_an_id_of_its_own():
    # nbformat 4.5 asks for one; JupyterLab and nbgrader key cells by it
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        ids = [cell.get("id") for cell in nb["cells"]]
        assert None not in ids and len(set(ids)) == len(ids), path.name
