"""Solutions to the exercises of notebook 05b (for instructors; tests/test_exercises.py checks them)."""

def balance(theta):  # 5b.3: n (1 - theta) = theta; in float32 1 - theta is 0 once theta rounds to 1.0
    return theta / (1 - theta)


def theta0_for(margin):  # 5b.4: ||w|| - tau = T logit(theta0), T = 1e-3
    import math

    return 1 / (1 + math.exp(-margin / 1e-3))


ANSWERS = {"5b.1": "a",  # inputs in [0, 1]: conv1 keeps 29 of 32 filters at round 30 (results/ablation/screen)
           "5b.2": 1e-4 * 15.942385 / 76,
           "5b.3": balance,
           "5b.4": theta0_for}  # 1e-4 logit(1 - 1e-7) / |g|, |g| = 3 x 5 x 5 + 1
