"""_utils.progress: bars whose updates a listener hears, inside ``listening`` only."""
from __future__ import annotations

import io

from culnig_ext._utils.progress import bar, listening


def test_the_listener_hears_each_update_with_its_count_and_only_while_listening():
    heard = []
    with listening(heard.append):
        b = bar(total=10, file=io.StringIO())
        b.update()  # the default step is one item
        b.update(3)
        b.update(0)  # nothing advanced: nothing to hear
        b.update(2.0)
    b.update(4)  # after the block: not heard
    assert heard == [1, 3, 2]
    assert b.n == 10
