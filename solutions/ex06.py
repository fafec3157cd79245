"""Solutions to the exercises of notebook 06 (for instructors; tests/test_exercises.py checks them)."""


def extrapolate(doc, rnd):  # 6.2: the last total plus the last interval's rate for every round to come
    a, b = doc["records"][-2], doc["records"][-1]
    rate = (b["bytes_down"] + b["bytes_up"] - a["bytes_down"] - a["bytes_up"]) / (b["round"] - a["round"])
    return b["cum_gib"] + rate * (rnd - b["round"]) / 2**30


ANSWERS = {"6.1": 2 * 10 * 4 * 608_702 * 6000 / 2**30,
           "6.2": extrapolate,
           "6.3": "a",
           "6.4": 3597 * (1 - (1 - 10 / 3597) ** 2000),
           "6.5": "a"}
