"""Business units of work. Each module documents its transactional contract.

* :mod:`myapp.services.dispatch`: the dispatch engine (``dispatch.run(company_id)``).
* :mod:`myapp.services.dispatching`: a dispatch run from the CLI, the API or the dashboard,
  recorded (``dispatch_and_record``).
* :mod:`myapp.services.invoicing`: batch invoicing (``generate_invoices(period)``), idempotent
  and resumable.
* :mod:`myapp.services.demo_data`: demo data around now (``myapp seed``).
* :mod:`myapp.services.bookings`: a company's bookings, filtered and paged (read-only).
* :mod:`myapp.services.tokens`: API tokens, stored as their SHA-256.
"""
