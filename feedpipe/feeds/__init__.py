"""Feed rules: what fan-out, retraction, follow and unfollow do, over the storage adapters.

Tasks may run in any order and any number of times. Every operation here therefore ends the
same way: act, re-read the source of truth (strongly consistent reads of the post and the
follow edges), and undo or redo whatever the truth no longer agrees with, until a check taken
after the last action agrees with it. A truth change after that check emits its own stream
record, whose task acts later still; so the last action on any (feed, post) pair always agrees
with the truth, whatever the interleaving. See README "Guarantees".
"""
