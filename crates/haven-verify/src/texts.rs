//! The localized messages that carry a code: the brand, the code, how long it lasts, and a
//! warning never to share it. SMS ends with the origin-bound one-time-code line
//! (`@domain #code`) that iOS and Android autofill offer for that domain only.

/// The languages Verify writes in; any other locale falls back to English.
pub const LOCALES: &[&str] = &["en", "es", "fr", "de"];

fn language(locale: &str) -> &'static str {
    let lang = locale
        .split(['-', '_'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    LOCALES.iter().copied().find(|l| *l == lang).unwrap_or("en")
}

fn minutes(lang: &str, n: u64) -> String {
    let one = n == 1;
    let word = match lang {
        "es" => {
            if one {
                "minuto"
            } else {
                "minutos"
            }
        }
        "de" => {
            if one {
                "Minute"
            } else {
                "Minuten"
            }
        }
        _ => {
            if one {
                "minute"
            } else {
                "minutes"
            }
        }
    };
    format!("{n} {word}")
}

/// The body of a code message.
pub fn body(locale: &str, brand: &str, code: &str, expiry_seconds: u64) -> String {
    let lang = language(locale);
    let m = minutes(lang, expiry_seconds.div_ceil(60).max(1));
    match lang {
        "es" => format!(
            "{brand}: tu código de verificación es {code}. Caduca en {m}. No compartas este código con nadie: {brand} nunca te lo pedirá."
        ),
        "fr" => format!(
            "{brand} : votre code de vérification est {code}. Il expire dans {m}. Ne communiquez ce code à personne : {brand} ne vous le demandera jamais."
        ),
        "de" => format!(
            "{brand}: Ihr Bestätigungscode lautet {code}. Er läuft in {m} ab. Geben Sie diesen Code niemals weiter: {brand} wird Sie nie danach fragen."
        ),
        _ => format!(
            "{brand}: your verification code is {code}. It expires in {m}. Never share this code with anyone: {brand} will never ask you for it."
        ),
    }
}

/// An SMS: the body, and the autofill line when the app gave its domain.
pub fn sms(
    locale: &str,
    brand: &str,
    code: &str,
    expiry_seconds: u64,
    app_domain: Option<&str>,
) -> String {
    let mut text = body(locale, brand, code, expiry_seconds);
    if let Some(d) = app_domain {
        text.push_str(&format!("\n\n@{d} #{code}"));
    }
    text
}

/// An email's subject.
pub fn subject(locale: &str, brand: &str) -> String {
    match language(locale) {
        "es" => format!("Tu código de verificación de {brand}"),
        "fr" => format!("Votre code de vérification {brand}"),
        "de" => format!("Ihr Bestätigungscode für {brand}"),
        _ => format!("Your {brand} verification code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_names_brand_code_and_warning() {
        for (locale, warning) in [
            ("en", "Never share"),
            ("es-MX", "No compartas"),
            ("fr", "Ne communiquez"),
            ("de-AT", "niemals weiter"),
            ("pt", "Never share"),
        ] {
            let t = sms(locale, "Clinic", "482913", 300, Some("clinic.example.org"));
            assert!(t.contains("Clinic") && t.contains("482913"), "{t}");
            assert!(t.contains(warning), "{locale}: {t}");
            assert!(t.contains("5 "), "{t}");
            assert!(t.ends_with("\n\n@clinic.example.org #482913"), "{t}");
        }
        assert!(body("en", "C", "1", 60).contains("1 minute."));
        assert!(!sms("en", "C", "1234", 60, None).contains('@'));
    }
}
