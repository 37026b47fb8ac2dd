"""Jobs on Apache Beam (`pip install 'tfrec[beam]'`).

`all_users`: every known user's top k, the job `tfrec recommend --all-users`
runs in one process (`tfrec.all_users`), as a Beam pipeline (DirectRunner by
default, any Beam runner through the usual pipeline options).
"""
