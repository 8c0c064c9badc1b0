"""``SMALL``: the arguments of a seconds-long ``feddst simulate`` run on scikit-learn's digits (shared by the
simulator's CLI and comparison tests). A top-level test module, imported as ``simulate_args`` like ``brokers``:
never through a ``tests.`` package name, which an installed distribution may shadow (gmqtt's wheel ships a
top-level ``tests`` package)."""

SMALL = ["--dataset", "digits", "--clients", "12", "--clients-per-round", "4", "--samples-per-class", "10",
         "--rounds", "4", "--local-epochs", "1", "--eval-every", "2", "--readjust-every", "2"]
