"""The keeper's hand-back: after lelect died and the job's whole group is gone, release
the leadership by its token with the recipe lelect sent (a module of the backend's, with
``hand_back(params, budget, exit_status)``), within the recipe's budget, and say how it
went in one line: released, not ours, or unreachable. Standard library only."""

import os

#: The budget of a recipe that names none.
DEFAULT_BUDGET = 3.0


class HandBackRunner:
    def __init__(self, recipe_json):
        self.recipe_json = recipe_json
        self.recipe = None
        self.call = None

    def load(self):
        """Decode the recipe and import its module once the job is under way (the keeper
        calls this HAND_BACK_LOAD_DELAY after the job started: never on the way to
        starting it, nor beside the job's own start; not even json, which a waiting
        keeper never needs), so that handing back after lelect died costs no import."""
        if self.call is not None or self.recipe_json is None:
            return
        recipe_json, self.recipe_json = self.recipe_json, None
        try:
            import importlib
            import json

            self.recipe = json.loads(recipe_json)
            self.call = importlib.import_module(self.recipe["module"]).hand_back
        except Exception:  # noqa: BLE001 - nothing is lost: the lease runs out instead
            self.recipe = None

    def run(self, exit_status):
        """Hand back; returns the word it logged."""
        self.load()
        if self.call is None:
            return None
        recipe = self.recipe
        budget = float(recipe.get("budget") or DEFAULT_BUDGET)
        try:
            word = self.call(recipe["params"], budget, exit_status)
        except Exception as exc:  # noqa: BLE001 - nothing is lost: the lease runs out instead
            word = f"unreachable ({type(exc).__name__}: {str(exc)[:200]}); the lease runs out instead"
        election = "".join(c for c in str(recipe.get("election") or "?") if c.isprintable())
        try:
            os.write(2, f"lelect keeper[{os.getpid()}]: lelect died; handed the leadership of"
                        f" {election!r} back: {word}\n".encode())
        except OSError:
            pass
        return word
