"""Solutions to the exercises of notebook 05 (for instructors; tests/test_exercises.py checks them)."""

ANSWERS = {"5.1": 120,  # the first record of the FedL1 history whose sparsity is above 0
           "5.2": "b",
           "5.3": 40 * (1 - 0.3516011828742752) * 878_538,  # 4 B x 10 clients x the values alive, round 1,000
           "5.4": 100 * (0.6012333 - 0.5583667),  # mean global accuracy at round 200, seeds 0-2
           "5.5": "c"}
