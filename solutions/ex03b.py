"""Solutions to the exercises of notebook 03b (for instructors; tests/test_exercises.py checks them)."""

from emfl.nn import models


def adam_step(w, g, m, v, t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):  # 3b.3
    t = t + 1
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps), m, v, t


classic = models.num_parameters(models.make_model("lenet5-classic", (3, 32, 32), 10))  # 62,006

ANSWERS = {"3b.1": 10 * 2 * 4 * classic * 1000 / 2**30,  # 4.62 GiB
           "3b.2": "b",  # about 30 % at alpha = 10
           "3b.3": adam_step,
           "3b.4": "a",
           # one conv2 filter: its 801 values and the 12,800 fc1 weights that read it are not sent;
           # 607 surviving units send a threshold and an unsent norm; 608 mask bits are 76 bytes
           "3b.5": 4 * (878_538 - 801 - 12_800) + 8 * 607 + 76}
