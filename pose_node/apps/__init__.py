"""Applications built on everything else (nothing imports them): the end-to-end demo (``pose_demo``)."""
