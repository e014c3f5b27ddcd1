"""Business units of work (the seeds' services). Each module documents its transactional contract.

* :mod:`myapp.services.dispatch`: the dispatch engine (``dispatch.run(company_id)``, the
  seeds' ``engine.run``).
* :mod:`myapp.services.invoicing`: batch invoicing (``generate_invoices(period)``), idempotent
  and resumable.
* :mod:`myapp.services.demo_data`: deterministic demo data (``myapp seed``).
"""
