//! Keys as the terminal client understands them, apart from the terminal library (so the
//! app and its tests need no terminal).

/// A key, without its modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCode {
    /// A printable character.
    Char(char),
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Tab.
    Tab,
    /// Backspace.
    Backspace,
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Arrow left.
    Left,
    /// Arrow right.
    Right,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// Home.
    Home,
    /// End.
    End,
    /// A function key.
    F(u8),
    /// Anything else.
    Other,
}

/// A key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Which key.
    pub code: KeyCode,
    /// With Ctrl.
    pub ctrl: bool,
    /// With Alt.
    pub alt: bool,
}

impl Key {
    /// A key alone.
    pub fn new(code: KeyCode) -> Key {
        Key { code, ctrl: false, alt: false }
    }

    /// A character alone.
    pub fn char(c: char) -> Key {
        Key::new(KeyCode::Char(c))
    }

    /// Ctrl and a character.
    pub fn ctrl(c: char) -> Key {
        Key { code: KeyCode::Char(c), ctrl: true, alt: false }
    }

    /// Alt and a key.
    pub fn alt(code: KeyCode) -> Key {
        Key { code, ctrl: false, alt: true }
    }
}

impl From<crossterm::event::KeyEvent> for Key {
    fn from(k: crossterm::event::KeyEvent) -> Key {
        use crossterm::event::{KeyCode as C, KeyModifiers as M};
        let code = match k.code {
            C::Char(c) => KeyCode::Char(c),
            C::Enter => KeyCode::Enter,
            C::Esc => KeyCode::Esc,
            C::Tab => KeyCode::Tab,
            C::BackTab => KeyCode::Tab,
            C::Backspace => KeyCode::Backspace,
            C::Up => KeyCode::Up,
            C::Down => KeyCode::Down,
            C::Left => KeyCode::Left,
            C::Right => KeyCode::Right,
            C::PageUp => KeyCode::PageUp,
            C::PageDown => KeyCode::PageDown,
            C::Home => KeyCode::Home,
            C::End => KeyCode::End,
            C::F(n) => KeyCode::F(n),
            _ => KeyCode::Other,
        };
        Key { code, ctrl: k.modifiers.contains(M::CONTROL), alt: k.modifiers.contains(M::ALT) }
    }
}
