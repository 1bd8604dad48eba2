"""What the Automerge binding (``automerge==0.2.0.dev4``) does not offer, built on its format.

Everything here exists because the Python binding lacks an API the Rust library has, or
handles untrusted bytes less strictly than a server must. It is the part to delete, module
by module, as the binding grows; ``tests/model/automerge_format/test_binding_gaps.py`` fails
when one of the missing APIs appears, to say which workaround has become dead weight.

==================  ============================================  ==============================
module              what it does                                  replace with, when it exists
==================  ============================================  ==============================
``leb128``          the integer encoding of the binary format     (goes with the two below)
``changes``         parse and check one untrusted change chunk:   ``decode_change`` /
                    hash, deps, actor, seq, bounded inflate, op   ``Change.from_bytes`` with
                    count, values the binding panics on           errors instead of panics
``op_columns``      decode a change's op columns: root-map keys   a change's ops with their
                    written, their predecessors, objects made     predecessors (``Change.ops``)
``sync_message``    a sync message carrying only raw changes      ``Document.apply_changes``
``documents``       load/apply on a fork with heads checked; any  a strict ``apply_changes``;
                    binding exception or Rust panic contained as  panics mapped to exceptions
                    ``AutomergeError``                            by the binding
==================  ============================================  ==============================

Nothing here imports from the rest of fieldsync: the family depends on the binding and the
standard library only (``tests/test_layers.py`` holds it to that).
"""
