//! Chat prompts rendered from the model's Jinja chat template (`tokenizer.chat_template`) with minijinja.
//!
//! Python-isms that HF templates use (`.strip()`, `.startswith()`, `.items()`, …) come from minijinja-contrib's
//! pycompat layer; `raise_exception` and `strftime_now` are provided; `{% break %}`/`{% continue %}` are enabled.

use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;

use crate::error::{Error, Result};

/// One chat message as the template sees it (`content` already flattened to text).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Used when a model ships no template: plain ChatML.
pub const CHATML_FALLBACK: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + \
message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> String {
    // Only the date parts templates use; the engine has no timezone database.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    format
        .replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", MONTHS[(m - 1) as usize])
        .replace("%b", &MONTHS[(m - 1) as usize][..3])
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.set_trim_blocks(false);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| Error::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn user(s: &str) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: s.into(),
        }
    }

    #[test]
    fn smollm_template_adds_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM, "<|im_start|>", "<|im_end|>").unwrap();
        let s = t.render(&[user("What is 12 + 30?")], true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_loop_controls_and_raise_exception() {
        let src = "{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}{{ m.content.strip() }}\
                   {% if m.content.startswith('stop') %}{% break %}{% endif %}{% endfor %}\
                   {% if messages|length > 3 %}{{ raise_exception('too many') }}{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let msgs = [
            user(" a "),
            ChatMessage {
                role: "skip".into(),
                content: "x".into(),
            },
            user("stop"),
        ];
        assert_eq!(t.render(&msgs, false).unwrap(), "astop");
        let err = t
            .render(&[user("1"), user("2"), user("3"), user("4")], false)
            .unwrap_err();
        assert!(err.to_string().contains("too many"));
    }

    #[test]
    fn bad_template_is_an_error() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
