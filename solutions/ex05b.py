"""Solutions to the exercises of notebook 05b (for instructors; tests/test_exercises.py checks them)."""

ANSWERS = {"5b.1": "c",  # inputs in [0, 1]: conv1 keeps 29 of 32 filters at round 30 (results/ablation/screen)
           "5b.2": 1e-4 * 15.942385 / 76}  # 1e-4 logit(1 - 1e-7) / |g|, |g| = 3 x 5 x 5 + 1
