"""The example site: a landing page with a callback form, and a shop order that is
paid when its deal is won in amoCRM.

Run it against the sandbox::

    python -m flask_amocrm.sandbox --port 8089 &
    export AMOCRM_BASE_URL=http://127.0.0.1:8089 AMOCRM_TOKEN=sandbox-token
    flask --app example_app.site amocrm init-db     # the amocrm_* tables, once
    flask --app example_app.site run

The form sends the fields the visitor filled in, not ``request.form``: Flask-WTF's
``csrf_token`` is not something the visitor said (capture leaves it out anyway).

``/order`` places an order (``orders.py``) and sends it to amoCRM as a lead. With
``AMOCRM_WEBHOOK_SECRET`` set and ``flask amocrm webhooks install`` run, amoCRM
tells the site when the deal moves; the receiver of ``lead_status_changed`` below
marks the order paid when its deal is won (``make demo`` shows it).
"""

from __future__ import annotations

import os
from typing import Any

from flask import (
    Flask,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    url_for,
)
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix
from wtforms import EmailField, StringField, TelField
from wtforms.validators import DataRequired, Length, Optional

from flask_amocrm import AmoCRM, Event, form_submitted, lead_status_changed

from . import orders

amocrm = AmoCRM()
csrf = CSRFProtect()
#: amoCRM's "won" status, the same in every pipeline.
WON = 142
PRODUCT = "Chesterfield"


class CallbackForm(FlaskForm):
    name = StringField("Your name", validators=[DataRequired(), Length(max=100)])
    phone = TelField("Phone", validators=[DataRequired(), Length(max=30)])
    email = EmailField("E-mail", validators=[Optional(), Length(max=100)])


class OrderForm(FlaskForm):
    name = StringField("Your name", validators=[DataRequired(), Length(max=100)])
    phone = TelField("Phone", validators=[DataRequired(), Length(max=30)])


def create_app() -> Flask:
    app = Flask(__name__, instance_path=os.environ.get("EXAMPLE_INSTANCE_PATH"))
    app.config.update(
        SECRET_KEY=os.environ.get("SECRET_KEY", "example-only-secret"),
        AMOCRM_SITE_NAME="Example shop",
        AMOCRM_RULES=os.path.join(os.path.dirname(__file__), "rules.toml"),
    )
    # Every AMOCRM_* environment variable becomes a config key.
    app.config.update(
        {k: v for k, v in os.environ.items() if k.startswith("AMOCRM_") and v}
    )
    if os.environ.get("BEHIND_PROXY"):
        # Only behind a proxy you run: then remote_addr is the visitor's address.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    csrf.init_app(app)
    amocrm.init_app(app)

    @app.route("/", methods=["GET", "POST"])
    def landing() -> str:
        form = CallbackForm()
        if form.validate_on_submit():
            form_submitted.send(
                current_app._get_current_object(),  # type: ignore[attr-defined]
                form="callback",
                data={
                    "name": form.name.data,
                    "phone": form.phone.data,
                    "email": form.email.data or "",
                },
            )
            return redirect(url_for("thanks"))
        return render_template("landing.html", form=form)

    @app.route("/thanks")
    def thanks() -> str:
        return render_template("thanks.html")

    @app.route("/order", methods=["GET", "POST"])
    def order() -> Any:
        form = OrderForm()
        if form.validate_on_submit():
            number = orders.place(app, PRODUCT, form.name.data or "")
            form_submitted.send(
                current_app._get_current_object(),  # type: ignore[attr-defined]
                form="order",
                data={
                    "order": number,
                    "product": PRODUCT,
                    "name": form.name.data,
                    "phone": form.phone.data,
                },
            )
            return redirect(url_for("order_status", number=number))
        g.amocrm_page_title = PRODUCT  # the page's title in the visitor's path
        return render_template("order.html", form=form, product=PRODUCT)

    @app.route("/orders/<int:number>")
    def order_status(number: int) -> dict[str, Any]:
        found = orders.get(app, number)
        if found is None:
            abort(404)
        return found

    # When the deal is won in amoCRM, the order it came from is paid.
    @lead_status_changed.connect_via(app)
    def order_paid(
        sender: Flask, status_id: int, event: Event | None, **_: Any
    ) -> None:
        if status_id == WON and event is not None and event.source == "order":
            orders.mark_paid(sender, int(event.data["order"]))

    return app
