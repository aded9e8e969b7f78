"""The example site: a landing page with a callback form.

Run it against the sandbox::

    python -m flask_amocrm.sandbox --port 8089 &
    export AMOCRM_BASE_URL=http://127.0.0.1:8089 AMOCRM_TOKEN=sandbox-token
    flask --app example_app.site amocrm init-db     # the amocrm_* tables, once
    flask --app example_app.site run

The form sends the fields the visitor filled in, not ``request.form``: Flask-WTF's
``csrf_token`` is not something the visitor said (capture leaves it out anyway).
"""

from __future__ import annotations

import os

from flask import Flask, current_app, redirect, render_template, url_for
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix
from wtforms import EmailField, StringField, TelField
from wtforms.validators import DataRequired, Length, Optional

from flask_amocrm import AmoCRM, form_submitted

amocrm = AmoCRM()
csrf = CSRFProtect()


class CallbackForm(FlaskForm):
    name = StringField("Your name", validators=[DataRequired(), Length(max=100)])
    phone = TelField("Phone", validators=[DataRequired(), Length(max=30)])
    email = EmailField("E-mail", validators=[Optional(), Length(max=100)])


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

    return app
