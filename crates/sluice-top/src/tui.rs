//! The full-screen view (ratatui over crossterm).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use tokio::sync::mpsc;

use crate::model::{Scrape, View};
use crate::render::tables;
use crate::{Fetcher, TopError};

/// Leaves raw mode and the alternate screen however the view ends (ratatui's panic hook
/// covers panics).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// What the screen shows between scrapes.
struct Screen {
    url: String,
    interval: Duration,
    view: Option<View>,
    updated: Option<SystemTime>,
    /// The last scrape's error, while the target cannot be read.
    error: Option<String>,
}

pub(crate) async fn run(fetcher: Fetcher, interval: Duration) -> Result<(), TopError> {
    let restore = Restore;
    let mut terminal = ratatui::try_init()?;

    // crossterm's reader blocks, so it lives on its own thread; it stops when told to or when
    // the receiver is gone.
    let stop = Arc::new(AtomicBool::new(false));
    let (key_tx, mut keys) = mpsc::channel::<Event>(32);
    let reader_stop = stop.clone();
    std::thread::spawn(move || {
        while !reader_stop.load(Ordering::Relaxed) {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => {
                    let sent = event::read().ok().is_some_and(|ev| key_tx.blocking_send(ev).is_ok());
                    if !sent {
                        break;
                    }
                }
                Ok(false) => {}
                Err(_) => break,
            }
        }
    });

    // Scraping runs apart from the key loop so that a slow or dead target never delays `q`.
    let mut screen = Screen { url: fetcher.url().to_owned(), interval, view: None, updated: None, error: None };
    let (scrape_tx, mut scrapes) = mpsc::channel::<Result<Scrape, TopError>>(2);
    let scraper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if scrape_tx.send(fetcher.scrape().await).await.is_err() {
                break;
            }
        }
    });

    let mut prev: Option<Scrape> = None;
    let result = loop {
        if let Err(e) = terminal.draw(|f| draw(f, &screen)) {
            break Err(TopError::Terminal(e));
        }
        tokio::select! {
            scrape = scrapes.recv() => match scrape {
                Some(Ok(scrape)) => {
                    screen.view = Some(View::new(prev.as_ref(), &scrape));
                    screen.updated = Some(SystemTime::now());
                    screen.error = None;
                    prev = Some(scrape);
                }
                Some(Err(TopError::Unreachable { reason, .. })) => screen.error = Some(reason),
                Some(Err(e)) => screen.error = Some(e.to_string()),
                None => break Ok(()),
            },
            key = keys.recv() => match key {
                Some(Event::Key(k)) if k.kind == KeyEventKind::Press && quits(k.code, k.modifiers) => break Ok(()),
                Some(_) => {}
                None => break Ok(()),
            },
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    stop.store(true, Ordering::Relaxed);
    scraper.abort();
    drop(restore);
    result
}

fn quits(code: KeyCode, modifiers: KeyModifiers) -> bool {
    matches!(code, KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc)
        || (modifiers.contains(KeyModifiers::CONTROL) && matches!(code, KeyCode::Char('c')))
}

fn draw(frame: &mut Frame, screen: &Screen) {
    let tables = screen.view.as_ref().map(tables).unwrap_or_default();
    let mut constraints = vec![Constraint::Length(1), Constraint::Length(1)];
    constraints.extend(tables.iter().map(|t| Constraint::Length(t.rows.len() as u16 + 3)));
    constraints.push(Constraint::Fill(1));
    constraints.push(Constraint::Length(1));
    let areas = Layout::vertical(constraints).split(frame.area());

    let every = humantime::format_duration(screen.interval).to_string();
    let url = screen.url.as_str();
    let title = Line::from(vec![
        Span::styled("sluice top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("  {url}  every {every}")),
    ]);
    frame.render_widget(Paragraph::new(title), areas[0]);

    let status = match (&screen.error, screen.updated) {
        (Some(reason), _) => Line::from(Span::styled(
            format!("cannot reach {url}: {reason} — retrying every {every}"),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        )),
        (None, Some(at)) => {
            let empty = screen.view.as_ref().is_some_and(View::is_empty);
            let note = if empty { " — no sluice metrics on this page yet" } else { "" };
            Line::from(Span::styled(
                format!("updated {}{note}", humantime::format_rfc3339_seconds(at)),
                Style::new().fg(Color::Green),
            ))
        }
        (None, None) => Line::raw("connecting…"),
    };
    frame.render_widget(Paragraph::new(status), areas[1]);

    for (i, table) in tables.iter().enumerate() {
        let widths: Vec<Constraint> = table.widths().into_iter().map(|w| Constraint::Length(w as u16)).collect();
        let cell = |c: usize, text: &str| {
            let line = Line::raw(text.to_owned());
            let line = if table.right.get(c).copied().unwrap_or(false) { line.right_aligned() } else { line };
            let alarm = table.header.get(c) == Some(&"ALARMS") && text != "-";
            Cell::from(line).style(if alarm {
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
            } else {
                Style::new()
            })
        };
        let header = Row::new(table.header.iter().enumerate().map(|(c, h)| cell(c, h)))
            .style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED));
        let rows = table.rows.iter().map(|r| Row::new(r.iter().enumerate().map(|(c, t)| cell(c, t))));
        let kind = table.header.first().copied().unwrap_or("").to_lowercase();
        let widget = Table::new(rows, widths)
            .header(header)
            .column_spacing(2)
            .block(Block::bordered().title(format!(" {kind}s ")));
        frame.render_widget(widget, areas[2 + i]);
    }

    let footer = Line::from(vec![
        Span::styled(" q ", Style::new().add_modifier(Modifier::REVERSED)),
        Span::raw(" quit   rates are per second over the last interval; \"-\": not reported"),
    ]);
    if let Some(area) = areas.last() {
        frame.render_widget(Paragraph::new(footer), *area);
    }
}
