"""Solutions to the exercises of notebook 05 (for instructors; tests/test_exercises.py checks them)."""

import math

ANSWERS = {"5.1": 120,  # the first record of the FedL1 history whose sparsity is above 0
           "5.2": "c",
           "5.3": 40 * (1 - 0.3516011828742752) * 878_538,  # 4 B x 10 clients x the values alive, round 1,000
           "5.4": 100 * (0.6012333 - 0.5583667),  # mean global accuracy at round 200, seeds 0-2
           "5.5": "b",
           # one conv2 filter: its 801 values and the 12,800 fc1 weights that read it are not sent;
           # 607 surviving units send a threshold and an unsent norm; 608 mask bits are 76 bytes
           "5.6": 4 * (878_538 - 801 - 12_800) + 8 * 607 + 76,
           # round 770: sparsity_own steps by 76 values (a conv1 filter, 3 x 5 x 5 + 1), sparsity by 1,351:
           # 1,351 - 76 = 1,275 conv2 weights, 25 for each conv2 filter still alive
           "5.7": ("conv1", (1351 - 76) // 25),
           # c_g = (lam0 |g| - 1e-4 logit(theta0)) / N_s changes sign at theta0 = 0.99, |g| = 32 x 5 x 5 + 1
           "5.8": 1e-4 * math.log(0.99 / 0.01) / 801}
