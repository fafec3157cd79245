"""Solutions to the exercises of notebook 06 (for instructors; tests/test_exercises.py checks them)."""


def extrapolate(doc, rnd):  # 6.2: the last total plus the last interval's rate for every round to come
    a, b = doc["records"][-2], doc["records"][-1]
    rate = (b["bytes_down"] + b["bytes_up"] - a["bytes_down"] - a["bytes_up"]) / (b["round"] - a["round"])
    return b["cum_gib"] + rate * (rnd - b["round"]) / 2**30


def units_alive(doc):  # 6.6: down - up is a threshold and an unsent norm (8 B) per surviving unit, per client
    a, b = doc["records"][-2], doc["records"][-1]
    extra = (b["bytes_down"] - a["bytes_down"]) - (b["bytes_up"] - a["bytes_up"])
    return extra / (b["round"] - a["round"]) / doc["config"]["clients_per_round"] / 8


ANSWERS = {"6.1": 2 * 10 * 4 * 48_846 * 6000 / 2**30,  # the classic LeNet-5 on FEMNIST: 48,846 values
           "6.2": extrapolate,
           "6.3": "b",
           "6.4": 3597 * (1 - (1 - 10 / 3597) ** 2000),
           "6.5": "c",
           "6.6": units_alive,
           # FedSparse mid, round 2,000: 608 - 451 = 157 units pruned whose own groups hold 157,704 values;
           # a conv1 filter owns 26, a conv2 filter 801, an fc1 unit 1,025: 157 fc1 units would own 160,925,
           # 3,221 too many = 3 x (1,025 - 26) + 1 x (1,025 - 801)
           "6.7": (3, 1, 153)}
